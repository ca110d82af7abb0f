"""UnityDiT: one diffusion transformer over RGB latents and S auxiliary modality streams.

Token layout. Each stream's latents [F, H, W, C] are patchified to n = F/pt · H/ph · W/pw
tokens. The joint grid is (f, h, (1+S)·w): RGB in width columns [0, w), modality stream s in
[s·w, (s+1)·w). Attention is permutation-equivariant given the RoPE positions, so tokens are
kept stream-major ([B, G, n, D], G = 1 + S) and each carries its joint-grid position.

Conditioning (paper §3.2, App. A):
- modality-adaptive switcher: RGB tokens are modulated from t_emb(t_rgb), modality tokens from
  MLP(L_k + t_emb(t_m)) (`switcher="adaptive"`), or t_emb(t_m) + MLP(L_k + t_emb(t_m)) with a
  zero-initialised last layer (`switcher_residual`, for pretrained backbones); release variant
  `switcher="token_add"` adds L_k to the modality tokens and modulates everything from t_emb(t).
- in-context learner: dual-branch cross-attention (shared weights), RGB tokens attend the
  caption C_r, modality tokens their modality prompt C_m.
- heads: final AdaLN + zero-initialised linear; modality head shared or one per modality.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unity_jax.model import layers
from unity_jax.model import rope as rope_lib
from unity_jax.model import text as text_lib

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def patchify(x, patch):
  """[B, F, H, W, C] -> [B, n, pt·ph·pw·C] (tokens in f, h, w order)."""
  b, f, h, w, c = x.shape
  pt, ph, pw = patch
  x = x.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(tokens, grid, patch, channels):
  """[B, n, pt·ph·pw·C] -> [B, F, H, W, C] for token grid (f, h, w)."""
  b = tokens.shape[0]
  (f, h, w), (pt, ph, pw) = grid, patch
  x = tokens.reshape(b, f, h, w, pt, ph, pw, channels)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, f * pt, h * ph, w * pw, channels)


class OutputHead(nn.Module):
  """Final AdaLN (shift, scale from cond + a learned table) and a zero-initialised linear.

  x: [B, n, D]; cond: [B, D]; modality_index: int [B] selects one of `num_heads` heads
  (per-modality heads, App. A.2) or None for a single head. Returns [B, n, out_dim].
  """
  out_dim: int
  num_heads: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cond, modality_index=None):
    dim = x.shape[-1]
    table = self.param("modulation", nn.with_logical_partitioning(
        nn.initializers.zeros, ("modality", None, "embed")), (self.num_heads, 2, dim),
                       self.param_dtype)
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.zeros, ("modality", "embed", None)), (self.num_heads, dim, self.out_dim),
                        self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros, ("modality", None)), (self.num_heads, self.out_dim),
                      self.param_dtype)
    index = jnp.zeros(x.shape[:1], jnp.int32) if modality_index is None else modality_index
    # Select each sample's head with a one-hot contraction rather than a gather: it partitions
    # cleanly when the weights are FSDP-sharded, and is exact (x·1 + y·0) at HIGHEST precision.
    onehot = jax.nn.one_hot(index, self.num_heads, dtype=self.param_dtype)       # [B, K]
    select = lambda w: jnp.einsum("bk,k...->b...", onehot, w,
                                  precision=jax.lax.Precision.HIGHEST)
    mod = select(table) + cond[:, None, :].astype(self.param_dtype)             # [B, 2, D]
    shift, scale = mod[:, 0, None, :], mod[:, 1, None, :]
    h = layers.modulate(layers.layer_norm(x), shift.astype(x.dtype), scale.astype(x.dtype))
    out = jnp.einsum("bnd,bdo->bno", h.astype(self.dtype), select(kernel).astype(self.dtype))
    return out + select(bias)[:, None, :].astype(self.dtype)


def data_to_velocity(data_prediction, noisy, t, min_t: float = 0.05):
  """Velocity of a clean-data (x-) prediction: v = (x_t − x̂_0) / max(t, min_t).

  With x_t = (1 − t)·x_0 + t·ε and v = ε − x_0, v = (x_t − x_0)/t exactly; the clip keeps the
  implied loss weight on x̂_0 (1/t²) bounded near clean data. Predicting data rather than
  velocity is what lets a narrow network denoise large patches (Li & He 2025, "Back to Basics:
  Let Denoising Generative Models Denoise"): the clean signal lies near a low-dimensional
  manifold, while a velocity target makes the network carry the full-dimensional noise from its
  input to its output, and what it fails to carry stays in every sample as patch-wise noise.
  Args: data_prediction, noisy: float32 [B, ...]; t: [B] or [B, S] (a prefix of their shape).
  """
  t = jnp.maximum(t.astype(jnp.float32), min_t)
  t = t.reshape(t.shape + (1,) * (noisy.ndim - t.ndim))
  return (noisy.astype(jnp.float32) - data_prediction) / t


class UnityDiT(nn.Module):
  """The UnityVideo transformer. See the module docstring; every field is a config switch."""
  dim: int
  num_layers: int
  num_heads: int
  ffn_dim: int
  latent_channels: int
  num_modalities: int = 5
  patch_size: tuple[int, int, int] = (1, 2, 2)
  freq_dim: int = 256
  text_encoder: str = "builtin"       # "builtin" (byte tokens) | "precomputed" (embeddings)
  text_dim: int = 256
  text_layers: int = 2
  text_heads: int = 4
  text_max_len: int = 64
  switcher: str = "adaptive"          # "adaptive" | "token_add" (release)
  # adaptive only: cond_m = t_emb(t_m) + MLP(L_k + t_emb(t_m)), the MLP's last layer zero-init.
  switcher_residual: bool = False
  # "shared" | "separate" (release: own patch embed + zero linear)
  modality_embed: str = "shared"
  head_mode: str = "per_modality"     # "per_modality" | "shared"
  prediction: str = "velocity"        # "velocity" | "data" (x-prediction): see data_to_velocity
  # t_rgb / t_modality are t·timestep_scale in Wan's units; 1.0 takes Wan's 0..1000 timesteps
  # as they are (velocity prediction only; unity_jax.wan.rgb_apply), exactly.
  timestep_scale: float = 1000.0
  data_prediction_min_t: float = 0.05
  qk_norm: bool = True
  rope_theta: float = 10000.0
  attention: str = "xla"
  attention_chunk: int = 512
  remat: str = "none"
  scan_layers: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _dense(self, features, axes, name, zero_init=False):
    return layers.dense(features, axes, name=name, zero_init=zero_init, dtype=self.dtype,
                        param_dtype=self.param_dtype)

  def encode_text(self, text):
    """text: {"tokens": int [N, L], "mask"} or {"embedding": [N, L, Dt], "mask"} -> [N, L, D]."""
    if self.text_encoder == "builtin":
      if "tokens" not in text:
        raise ValueError("model.text_encoder='builtin' needs token ids under 'tokens'")
      hidden = text_lib.TextEncoder(self.text_dim, self.text_layers, self.text_heads,
                                    self.text_max_len, dtype=self.dtype,
                                    param_dtype=self.param_dtype, name="text_encoder")(
                                        text["tokens"], text["mask"])
    else:
      if "embedding" not in text:
        raise ValueError("model.text_encoder='precomputed' needs embeddings under 'embedding'")
      hidden = text["embedding"].astype(self.dtype)
    return layers.MLP2(self.dim, act="gelu", dtype=self.dtype,
                       param_dtype=self.param_dtype, name="text_projection")(hidden)

  @nn.compact
  def __call__(self, rgb, t_rgb, caption, modality=None, modality_id=None, t_modality=None,
               prompt=None):
    """Predicts flow velocities for every stream.

    Args:
      rgb: [B, F, H, W, C] noisy RGB latents.          t_rgb: [B] in [0, 1].
      caption: {"tokens"|"embedding": [B, L, ...], "mask": bool [B, L]} (C_r).
      modality: [B, S, F, H, W, C] noisy modality latents, or None for RGB-only.
      modality_id: int [B, S] (index into constants.MODALITIES; -1 = stream absent).
      t_modality: [B, S] in [0, 1].
      prompt: like caption with leading [B, S] (C_m, one modality prompt per stream).
    Returns:
      (rgb_velocity [B, F, H, W, C], modality_velocity [B, S, F, H, W, C] or None), float32.
    """
    batch = rgb.shape[0]
    patch = tuple(self.patch_size)
    grid = tuple(n // p for n, p in zip(rgb.shape[1:4], patch))
    tokens_per_stream = grid[0] * grid[1] * grid[2]
    num_streams = 0 if modality is None else modality.shape[1]
    groups = 1 + num_streams

    # --- Patch embedding (shared input layer, or the release's separate one + zero linear).
    embed_axes = (None, "embed")
    rgb_embed = self._dense(self.dim, embed_axes, "patch_embed")
    streams = [rgb_embed(patchify(rgb.astype(self.dtype), patch))]
    if num_streams:
      mod_patches = patchify(modality.reshape(batch * num_streams, *modality.shape[2:])
                             .astype(self.dtype), patch)
      if self.modality_embed == "shared":
        mod_tokens = rgb_embed(mod_patches)
      else:
        mod_tokens = self._dense(self.dim, embed_axes, "modality_patch_embed")(mod_patches)
        mod_tokens = self._dense(self.dim, ("embed", "mlp"), "modality_zero_linear",
                                 zero_init=True)(mod_tokens)
      streams.append(mod_tokens.reshape(batch, num_streams, tokens_per_stream, self.dim))
    x = streams[0][:, None] if not num_streams else jnp.concatenate(
        [streams[0][:, None], streams[1]], axis=1)            # [B, G, n, D]

    # --- Conditioning vectors per stream: cond [B, G, D].
    time_embed = layers.MLP2(self.dim, dtype=jnp.float32,
                             param_dtype=self.param_dtype, name="time_embed")
    t_emb = lambda t: time_embed(layers.timestep_sinusoid(t, self.freq_dim,
                                                          scale=self.timestep_scale))
    conds = [t_emb(t_rgb)[:, None]]
    if num_streams:
      modality_table = self.param("modality_embed", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), ("modality", "embed")), (self.num_modalities, self.dim),
                                  self.param_dtype)
      safe_id = jnp.maximum(modality_id, 0)
      learned = modality_table[safe_id]                        # [B, S, D]
      if self.switcher == "adaptive":
        switch = layers.MLP2(self.dim, zero_init_out=self.switcher_residual, dtype=jnp.float32,
                             param_dtype=self.param_dtype, name="modality_switcher")
        t_mod = t_emb(t_modality)
        switched = switch(learned + t_mod)
        # Residual form: a zero-initialised switcher leaves cond_m = t_emb(t_m), so a model
        # imported from a pretrained RGB backbone starts with the modality stream conditioned
        # exactly like the backbone at t_m (docs/wan.md).
        conds.append(t_mod + switched if self.switcher_residual else switched)
      else:  # "token_add": L_k added to the tokens, modulation from the (shared) timestep.
        x = x.at[:, 1:].add(learned[:, :, None, :].astype(x.dtype))
        conds.append(t_emb(t_modality))
    cond = jnp.concatenate(conds, axis=1)                      # [B, G, D]
    time_projection = self._dense(6 * self.dim, ("embed", "mlp"), "time_projection",
                                  zero_init=True)
    modulation = time_projection(nn.silu(cond)).reshape(batch, groups, 6, self.dim)

    # --- Text contexts per stream: [B·G, L, D].
    contexts = [caption] + ([prompt] if num_streams else [])
    context, context_mask = _stack_contexts(contexts, batch, num_streams)
    context = self.encode_text({**context, "mask": context_mask})

    # --- Positions, key mask, blocks.
    positions = rope_lib.grid_positions(*grid, groups)
    rope_tables = rope_lib.rope_tables(      # numpy: constants of the program (see rope_tables)
        rope_lib.rope_angles(positions, self.dim // self.num_heads, self.rope_theta))
    stream_valid = jnp.ones((batch, 1), bool)
    if num_streams:
      stream_valid = jnp.concatenate([stream_valid, modality_id >= 0], axis=1)
    x = x.reshape(batch, groups * tokens_per_stream, self.dim).astype(self.dtype)
    # One key-mask flag per stream: chunked attention masks whole key chunks with it.
    x = self._blocks(groups)(x, modulation, context, context_mask, rope_tables, stream_valid)

    # --- Heads.
    x = x.reshape(batch, groups, tokens_per_stream, self.dim)
    out_dim = self.latent_channels * patch[0] * patch[1] * patch[2]
    head_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    rgb_out = OutputHead(out_dim, name="rgb_head", **head_kw)(x[:, 0], cond[:, 0])
    rgb_velocity = self._velocity(unpatchify(rgb_out, grid, patch, self.latent_channels), rgb,
                                  t_rgb)
    if not num_streams:
      return rgb_velocity, None
    per_modality = self.head_mode == "per_modality"
    head = OutputHead(out_dim, self.num_modalities if per_modality else 1,
                      name="modality_head", **head_kw)
    mod_tokens = x[:, 1:].reshape(batch * num_streams, tokens_per_stream, self.dim)
    mod_out = head(mod_tokens, cond[:, 1:].reshape(batch * num_streams, self.dim),
                   safe_id.reshape(-1) if per_modality else None)
    mod_out = unpatchify(mod_out, grid, patch, self.latent_channels).reshape(modality.shape)
    return rgb_velocity, self._velocity(mod_out, modality, t_modality)

  def _velocity(self, head_out, noisy, t):
    """The heads' output as a float32 velocity (identity for prediction="velocity")."""
    head_out = head_out.astype(jnp.float32)
    if self.prediction == "velocity":
      return head_out
    return data_to_velocity(head_out, noisy, t, self.data_prediction_min_t)

  def _blocks(self, groups):
    block_kw = dict(num_streams=groups, num_heads=self.num_heads, ffn_dim=self.ffn_dim,
                    attention_impl=self.attention, attention_chunk=self.attention_chunk,
                    qk_norm=self.qk_norm, dtype=self.dtype, param_dtype=self.param_dtype)
    block_cls = layers.DiTBlock
    if self.remat != "none":
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
    if self.scan_layers:
      scanned = nn.scan(
          _ScanAdapter, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast,) * 5, length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})
      module = scanned(block_cls=block_cls, block_kw=block_kw, name="blocks")
      return lambda *args: module(*args)[0]

    def run(x, *args):
      for i in range(self.num_layers):
        x = block_cls(name=f"block_{i}", **block_kw)(x, *args)
      return x
    return run


class _ScanAdapter(nn.Module):
  """Wraps a block into the (carry, *broadcast) -> (carry, None) form nn.scan expects."""
  block_cls: Any
  block_kw: dict

  @nn.compact
  def __call__(self, x, *args):
    return self.block_cls(name="block", **self.block_kw)(x, *args), None


def _stack_contexts(contexts, batch, num_streams):
  """Pads caption ([B, L1, ...]) and prompts ([B, S, L2, ...]) to one length and stacks them.

  Returns ({"tokens"|"embedding": [B·G, L, ...]}, mask bool [B·G, L]) with G = 1 + S.
  """
  key = "tokens" if "tokens" in contexts[0] else "embedding"
  for name, context in zip(("caption", "prompt"), contexts):
    if key not in context or "mask" not in context:
      raise ValueError(f"{name} must hold {key!r} and 'mask' like the caption does "
                       f"(got keys {sorted(context)}); text inputs are either all token ids or "
                       "all precomputed embeddings")
  rows, masks = [contexts[0][key][:, None]], [contexts[0]["mask"][:, None]]
  if num_streams:
    rows.append(contexts[1][key])
    masks.append(contexts[1]["mask"])
  length = max(r.shape[2] for r in rows)
  pad = lambda a: jnp.pad(a, [(0, 0), (0, 0), (0, length - a.shape[2])] +
                          [(0, 0)] * (a.ndim - 3))
  values = jnp.concatenate([pad(r) for r in rows], axis=1)
  mask = jnp.concatenate([pad(m) for m in masks], axis=1)
  groups = 1 + num_streams
  return ({key: values.reshape(batch * groups, length, *values.shape[3:])},
          mask.reshape(batch * groups, length))
