"""Logical-axis -> mesh-axis rules, one table per mesh preset.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel + parameter/optimizer sharding),
`tensor` (Megatron-style heads/mlp sharding), `context` (sequence sharding of activations).
Parameters use `embed, mlp, heads, modality, vocab, layers`; activations use the `act_*` names
so a parameter's `embed` (sharded over fsdp) never collides with a batch sharded over fsdp.
"""

RULES = {
    # FSDP over `fsdp`, tensor parallelism over `tensor`, sequence sharding over `context`.
    "fsdp_tp": (
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("vocab", None),
        ("modality", None),
        ("layers", None),
        ("act_batch", ("data", "fsdp")),
        ("act_length", "context"),
        ("act_embed", None),
        ("act_heads", "tensor"),
        ("act_mlp", "tensor"),
    ),
    # Pure data parallelism: every parameter replicated (small models, debugging).
    "replicated": (
        ("embed", None), ("mlp", None), ("heads", None), ("vocab", None), ("modality", None),
        ("layers", None),
        ("act_batch", ("data", "fsdp")), ("act_length", None), ("act_embed", None),
        ("act_heads", None), ("act_mlp", None),
    ),
}


def rules_for(name: str):
  """The rules table named by config.mesh.rules."""
  if name not in RULES:
    raise ValueError(f"config.mesh.rules={name!r} is not known; expected one of {list(RULES)}")
  return RULES[name]
