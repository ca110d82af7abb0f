"""Transformer layers of the UnityVideo DiT (Wan/DiT style), with logical axis names.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `modality`, `vocab`, …)
and every large activation a logical sharding constraint (`act_batch`, `act_length`, …); the
mesh rules in `unity_jax/parallel/rules.py` map them to mesh axes.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unity_jax.model import attention as attention_lib
from unity_jax.model import rope as rope_lib

Dtype = Any
ACT_TOKENS = ("act_batch", "act_length", "act_embed")
ACT_HEADS = ("act_batch", "act_length", "act_heads", None)


def constrain(x, names):
  """Logical sharding constraint (a no-op outside a mesh / rules context)."""
  return nn.with_logical_constraint(x, names)


def dense(features, axes: Sequence[str | None], *, name, zero_init=False, dtype=jnp.float32,
          param_dtype=jnp.float32, use_bias=True):
  """nn.Dense whose kernel carries logical `axes` (in_axis, out_axis); bias follows out_axis."""
  kernel_init = nn.initializers.zeros if zero_init else nn.initializers.xavier_uniform()
  return nn.Dense(
      features, name=name, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
      kernel_init=nn.with_logical_partitioning(kernel_init, tuple(axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))


def layer_norm(x, eps=1e-6):
  """LayerNorm without affine parameters, statistics in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class RMSNorm(nn.Module):
  """RMS norm over the last axis with a learned scale (qk-norm across all heads, as in Wan)."""
  axis_name: str
  eps: float = 1e-6
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
    return (x32 * scale).astype(x.dtype)


class LayerNormAffine(nn.Module):
  """LayerNorm with learned scale and bias (Wan's cross-attention pre-norm)."""
  eps: float = 1e-6
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (dim,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      (dim,), self.param_dtype)
    return (layer_norm(x, self.eps) * scale + bias).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head attention with RMS qk-norm; self-attention when `context` is None.

  x: [B, N, D]; context: [B, L, D]; rope_tables (self-attention only): (cos, signed_sin) from
  `rope.rope_tables`, each [N, head_dim]; key_mask: bool [B, N or L], or one flag per equal
  segment of keys ([B, S], see `attention.expand_key_mask`). Returns [B, N, D].
  """
  num_heads: int
  implementation: str = "xla"
  chunk_size: int = 512
  qk_norm: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, rope_tables=None, key_mask=None):
    dim = x.shape[-1]
    head_dim = dim // self.num_heads
    kv_input = x if context is None else context
    proj = lambda name, inp: dense(dim, ("embed", "heads"), name=name, dtype=self.dtype,
                                   param_dtype=self.param_dtype)(inp)
    q, k, v = proj("query", x), proj("key", kv_input), proj("value", kv_input)
    if self.qk_norm:
      q = RMSNorm("heads", param_dtype=self.param_dtype, name="norm_q")(q)
      k = RMSNorm("heads", param_dtype=self.param_dtype, name="norm_k")(k)
    split = lambda t: t.reshape(*t.shape[:2], self.num_heads, head_dim)
    q, k, v = split(q), split(k), split(v)
    if rope_tables is not None:
      q, k = rope_lib.apply_rope(q, rope_tables), rope_lib.apply_rope(k, rope_tables)
    q, k, v = (constrain(t, ACT_HEADS) for t in (q, k, v))
    out = attention_lib.attention(q, k, v, key_mask, implementation=self.implementation,
                                  query_chunk=self.chunk_size, key_chunk=self.chunk_size)
    out = out.reshape(*out.shape[:2], dim)
    return dense(dim, ("heads", "embed"), name="out", dtype=self.dtype,
                 param_dtype=self.param_dtype)(out)


class FeedForward(nn.Module):
  """Linear -> GELU(tanh) -> Linear. [..., D] -> [..., D]."""
  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = dense(self.hidden_dim, ("embed", "mlp"), name="up", dtype=self.dtype,
              param_dtype=self.param_dtype)(x)
    h = nn.gelu(h, approximate=True)
    h = constrain(h, ("act_batch", "act_length", "act_mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), name="down", dtype=self.dtype,
                 param_dtype=self.param_dtype)(h)


def modulate(x, shift, scale):
  """AdaLN: x * (1 + scale) + shift, broadcasting [B, G, 1, D] over x: [B, G, N, D]."""
  return x * (1 + scale) + shift


class DiTBlock(nn.Module):
  """One UnityVideo block over the joint token sequence of G = 1 + S streams.

  Self-attention runs over all G·N tokens (RoPE on the joint grid); cross-attention is
  dual-branch with shared weights: the tokens of stream g attend only their own text context
  (caption for RGB, modality prompt for modality streams). AdaLN-Zero modulation per stream.

  Inputs:
    x: [B, G·N, D] tokens (stream-major); modulation: [B, G, 6, D] from the shared time
    projection; context: [B·G, L, D]; context_mask: bool [B·G, L]; rope_tables: 2 x [G·N, d];
    key_mask: bool [B, G], False for absent streams (or per token, [B, G·N]).
  """
  num_streams: int
  num_heads: int
  ffn_dim: int
  attention_impl: str = "xla"
  attention_chunk: int = 512
  qk_norm: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, modulation, context, context_mask, rope_tables, key_mask):
    batch, length, dim = x.shape
    groups = self.num_streams
    table = self.param("modulation", nn.with_logical_partitioning(
        nn.initializers.zeros, (None, "embed")), (6, dim), self.param_dtype)
    mod = (modulation + table.astype(modulation.dtype)).astype(self.dtype)
    shift1, scale1, gate1, shift2, scale2, gate2 = [mod[:, :, i, None, :] for i in range(6)]
    by_stream = lambda t: t.reshape(batch, groups, length // groups, dim)
    flat = lambda t: t.reshape(batch, length, dim)
    attn_kwargs = dict(num_heads=self.num_heads, implementation=self.attention_impl,
                       chunk_size=self.attention_chunk, qk_norm=self.qk_norm, dtype=self.dtype,
                       param_dtype=self.param_dtype)

    x = constrain(x, ACT_TOKENS)
    h = flat(modulate(by_stream(layer_norm(x)), shift1, scale1))
    h = Attention(name="self_attn", **attn_kwargs)(h, rope_tables=rope_tables, key_mask=key_mask)
    x = x + flat(by_stream(h) * gate1)

    h = LayerNormAffine(param_dtype=self.param_dtype, name="cross_norm")(x)
    h = h.reshape(batch * groups, length // groups, dim)
    h = Attention(name="cross_attn", **attn_kwargs)(h, context=context, key_mask=context_mask)
    x = x + h.reshape(batch, length, dim)

    h = flat(modulate(by_stream(layer_norm(x)), shift2, scale2))
    h = FeedForward(self.ffn_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="ffn")(h)
    x = x + flat(by_stream(h) * gate2)
    return constrain(x, ACT_TOKENS)


def timestep_sinusoid(t, dim: int, max_period: float = 10000.0, scale: float = 1000.0):
  """Sinusoidal embedding of t in [0, 1] (scaled to [0, 1000] as in Wan). [...] -> [..., dim].

  scale=1 embeds a timestep already in Wan's 0..1000 units exactly (T/1000·1000 is not always
  T in float32, and the sinusoid's fastest frequency turns that ulp into an output error).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  t = t.astype(jnp.float32)
  args = (t if scale == 1.0 else t * scale)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class MLP2(nn.Module):
  """Dense -> SiLU -> Dense, [..., in] -> [..., D] (time embedding, switcher, text projection).

  The input axis is named `embed` whatever its size (frequency or text dim) so FSDP shards it.
  """
  features: int
  act: str = "silu"
  zero_init_out: bool = False         # fc2 starts at zero (a residual branch that starts off)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = dense(self.features, ("embed", "mlp"), name="fc1", **kw)(x)
    x = nn.silu(x) if self.act == "silu" else nn.gelu(x, approximate=True)
    return dense(self.features, ("mlp", "embed"), name="fc2", zero_init=self.zero_init_out,
                 **kw)(x)
