"""The name and layout mapping between diffusers' WanTransformer3DModel and UnityDiT's RGB path.

Every entry is (unity_jax parameter path, diffusers tensor name, layout). Block entries are
relative to one block: diffusers names them `blocks.{i}.<name>`, unity_jax `block_{i}/<path>`
or, with `model.scan_layers=True`, `blocks/block/<path>` stacked on a leading layer axis.

A layout says how the stored tensor becomes the unity_jax leaf (for one layer), and is
invertible (export) and slice-aware (import reads only the slice a device holds):
  same         identical shape and order;
  table        [1, K, D] -> [K, D] (the blocks' scale_shift_table: AdaLN table);
  linear       torch Linear weight [out, in] -> Dense kernel [in, out];
  head_linear  [out, in] -> [1, in, out] (rgb_head keeps a leading head axis);
  head_bias    [out] -> [1, out];
  conv3d       Conv3d weight [D, C, pt, ph, pw] -> Dense kernel [pt·ph·pw·C, D] over patches
               flattened in (pt, ph, pw, C) order, as `dit.patchify` builds them.
"""

import numpy as np

TOP = (
    ("patch_embed/kernel", "patch_embedding.weight", "conv3d"),
    ("patch_embed/bias", "patch_embedding.bias", "same"),
    ("time_embed/fc1/kernel", "condition_embedder.time_embedder.linear_1.weight", "linear"),
    ("time_embed/fc1/bias", "condition_embedder.time_embedder.linear_1.bias", "same"),
    ("time_embed/fc2/kernel", "condition_embedder.time_embedder.linear_2.weight", "linear"),
    ("time_embed/fc2/bias", "condition_embedder.time_embedder.linear_2.bias", "same"),
    ("time_projection/kernel", "condition_embedder.time_proj.weight", "linear"),
    ("time_projection/bias", "condition_embedder.time_proj.bias", "same"),
    ("text_projection/fc1/kernel", "condition_embedder.text_embedder.linear_1.weight", "linear"),
    ("text_projection/fc1/bias", "condition_embedder.text_embedder.linear_1.bias", "same"),
    ("text_projection/fc2/kernel", "condition_embedder.text_embedder.linear_2.weight", "linear"),
    ("text_projection/fc2/bias", "condition_embedder.text_embedder.linear_2.bias", "same"),
    ("rgb_head/modulation", "scale_shift_table", "same"),
    ("rgb_head/kernel", "proj_out.weight", "head_linear"),
    ("rgb_head/bias", "proj_out.bias", "head_bias"),
)

_ATTENTION = (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("out", "to_out.0"))
BLOCK = (
    ("modulation", "scale_shift_table", "table"),
    *((f"{ours}_attn/{proj}/{kind}", f"{theirs}.{wan_proj}.{torch_kind}",
       "linear" if kind == "kernel" else "same")
      for ours, theirs in (("self", "attn1"), ("cross", "attn2"))
      for proj, wan_proj in _ATTENTION
      for kind, torch_kind in (("kernel", "weight"), ("bias", "bias"))),
    ("self_attn/norm_q/scale", "attn1.norm_q.weight", "same"),
    ("self_attn/norm_k/scale", "attn1.norm_k.weight", "same"),
    ("cross_attn/norm_q/scale", "attn2.norm_q.weight", "same"),
    ("cross_attn/norm_k/scale", "attn2.norm_k.weight", "same"),
    ("cross_norm/scale", "norm2.weight", "same"),
    ("cross_norm/bias", "norm2.bias", "same"),
    ("ffn/up/kernel", "ffn.net.0.proj.weight", "linear"),
    ("ffn/up/bias", "ffn.net.0.proj.bias", "same"),
    ("ffn/down/kernel", "ffn.net.2.weight", "linear"),
    ("ffn/down/bias", "ffn.net.2.bias", "same"),
)


def stored_shape(layout: str, shape: tuple, patch) -> tuple:
  """The diffusers shape of a tensor whose (per-layer) unity_jax shape is `shape`."""
  shape = tuple(shape)
  if layout == "same":
    return shape
  if layout == "table":
    return (1,) + shape
  if layout == "linear":
    return shape[::-1]
  if layout == "head_linear":
    return (shape[2], shape[1])
  if layout == "head_bias":
    return shape[1:]
  if layout == "conv3d":
    pt, ph, pw = patch
    return (shape[1], shape[0] // (pt * ph * pw), pt, ph, pw)
  raise ValueError(f"unknown layout {layout!r}")


def to_ours(layout: str, stored: np.ndarray, patch) -> np.ndarray:
  """The whole stored tensor in unity_jax layout."""
  if layout == "same":
    return stored
  if layout == "table":
    return stored[0]
  if layout == "linear":
    return stored.T
  if layout == "head_linear":
    return stored.T[None]
  if layout == "head_bias":
    return stored[None]
  if layout == "conv3d":
    return stored.transpose(2, 3, 4, 1, 0).reshape(-1, stored.shape[0])
  raise ValueError(f"unknown layout {layout!r}")


def from_ours(layout: str, ours: np.ndarray, patch) -> np.ndarray:
  """The inverse of `to_ours`: a unity_jax leaf (one layer) in diffusers layout."""
  if layout == "same":
    return ours
  if layout == "table":
    return ours[None]
  if layout == "linear":
    return ours.T
  if layout == "head_linear":
    return ours[0].T
  if layout == "head_bias":
    return ours[0]
  if layout == "conv3d":
    pt, ph, pw = patch
    dim = ours.shape[1]
    return ours.reshape(pt, ph, pw, -1, dim).transpose(4, 3, 0, 1, 2)
  raise ValueError(f"unknown layout {layout!r}")


def read_ours(checkpoint, name: str, layout: str, index: tuple, patch) -> np.ndarray:
  """`to_ours(stored)[index]`, reading only the stored bytes the slice needs.

  index: one slice per unity_jax axis (what `jax.make_array_from_callback` hands a device).
  Transposes map the slices onto the stored axes; unit axes are added after the read. The
  Conv3d patch embedding is read whole (its (pt, ph, pw, C) rows are not a stored slice; it is
  the size of one [D, pt·ph·pw·C] matrix).
  """
  if layout == "same":
    return checkpoint.read(name, index)
  if layout == "table":
    return checkpoint.read(name, (0,) + tuple(index))
  if layout == "linear":
    return checkpoint.read(name, tuple(index)[::-1]).T
  if layout == "head_linear":
    return checkpoint.read(name, (index[2], index[1])).T[None][index[0]]
  if layout == "head_bias":
    return checkpoint.read(name, (index[1],))[None][index[0]]
  if layout == "conv3d":
    return to_ours(layout, checkpoint.read(name), patch)[tuple(index)]
  raise ValueError(f"unknown layout {layout!r}")


def block_prefix(scan_layers: bool, layer: int | None = None) -> str:
  """The unity_jax path prefix of the blocks ('blocks/block/' scanned, else 'block_{i}/')."""
  return "blocks/block/" if scan_layers else f"block_{layer}/"


def rgb_entries(num_layers: int, scan_layers: bool):
  """[(unity_jax leaf path, [diffusers name per layer, or one name], layout, stacked)].

  `stacked` leaves carry a leading layer axis whose i-th slice is `blocks.{i}.<name>`.
  """
  entries = [(path, [name], layout, False) for path, name, layout in TOP]
  for path, name, layout in BLOCK:
    if scan_layers:
      entries.append((block_prefix(True) + path,
                      [f"blocks.{i}.{name}" for i in range(num_layers)], layout, True))
    else:
      entries.extend((block_prefix(False, i) + path, [f"blocks.{i}.{name}"], layout, False)
                     for i in range(num_layers))
  return entries
