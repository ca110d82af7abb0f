"""Multi-head attention kernels behind one function, selected by config.

Implementations (all take [B, N, heads, d] inputs and an optional key mask):
- "xla":      plain dot-product attention, softmax in float32. Default on CPU; O(N²) memory.
- "chunked":  memory-efficient attention (online softmax over key chunks, scanned over query
              chunks); activation memory grows linearly with sequence length.
- "cudnn":    jax.nn.dot_product_attention(implementation="cudnn") on GPUs.
- "splash":   the Pallas TPU splash-attention kernel.
The accelerator paths are import-guarded: asking for them where they cannot run raises a clear
error instead of silently falling back.
"""

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "chunked", "cudnn", "splash")
_NEG_INF = -1e30


def dot_product_attention(q, k, v, key_mask=None):
  """Reference attention. q: [B, Nq, H, d]; k, v: [B, Nk, H, d]; key_mask: bool [B, Nk]."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, _NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _pad_to_multiple(x, axis, multiple):
  pad = (-x.shape[axis]) % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def chunked_attention(q, k, v, key_mask=None, *, query_chunk=256, key_chunk=512):
  """Memory-efficient attention with an online softmax (Rabe & Staats; flash-style).

  Never materialises the [Nq, Nk] logits: peak activation memory is
  O(B · H · query_chunk · key_chunk) per step, linear in sequence length overall.
  Shapes as in `dot_product_attention`.
  """
  batch, num_q, heads, dim = q.shape
  num_k = k.shape[1]
  if key_mask is None:
    key_mask = jnp.ones((batch, num_k), bool)
  query_chunk = min(query_chunk, num_q)
  key_chunk = min(key_chunk, num_k)
  q = _pad_to_multiple(q, 1, query_chunk) * (dim ** -0.5)
  k = _pad_to_multiple(k, 1, key_chunk)
  v = _pad_to_multiple(v, 1, key_chunk)
  key_mask = _pad_to_multiple(key_mask, 1, key_chunk)  # Padding keys are masked (False).
  kv_chunks = k.shape[1] // key_chunk
  k_blocks = k.reshape(batch, kv_chunks, key_chunk, heads, dim).swapaxes(0, 1)
  v_blocks = v.reshape(batch, kv_chunks, key_chunk, heads, dim).swapaxes(0, 1)
  m_blocks = key_mask.reshape(batch, kv_chunks, key_chunk).swapaxes(0, 1)

  def attend_query_chunk(q_chunk):  # [B, Cq, H, d] -> [B, Cq, H, d]
    def step(carry, kv):
      acc, running_max, denom = carry
      k_c, v_c, m_c = kv
      logits = jnp.einsum("bqhd,bkhd->bhqk", q_chunk, k_c, preferred_element_type=jnp.float32)
      logits = jnp.where(m_c[:, None, None, :], logits, _NEG_INF)
      new_max = jnp.maximum(running_max, logits.max(axis=-1))
      correction = jnp.exp(running_max - new_max)
      probs = jnp.exp(logits - new_max[..., None])
      denom = denom * correction + probs.sum(axis=-1)
      acc = acc * correction[..., None] + jnp.einsum(
          "bhqk,bkhd->bhqd", probs, v_c.astype(jnp.float32))
      return (acc, new_max, denom), None

    shape = (batch, heads, q_chunk.shape[1])
    init = (jnp.zeros(shape + (dim,), jnp.float32), jnp.full(shape, _NEG_INF, jnp.float32),
            jnp.zeros(shape, jnp.float32))
    (acc, _, denom), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, m_blocks))
    out = acc / jnp.maximum(denom, 1e-30)[..., None]
    return out.transpose(0, 2, 1, 3).astype(v.dtype)

  q_blocks = q.reshape(batch, -1, query_chunk, heads, dim).swapaxes(0, 1)
  # Checkpoint each query chunk so the backward pass recomputes rather than stores logits.
  out = jax.lax.map(jax.checkpoint(attend_query_chunk), q_blocks)
  out = out.swapaxes(0, 1).reshape(batch, -1, heads, dim)
  return out[:, :num_q]


def _cudnn_attention(q, k, v, key_mask=None):
  if jax.default_backend() != "gpu":
    raise RuntimeError("attention='cudnn' needs a GPU backend; use 'xla' or 'chunked' here")
  mask = None if key_mask is None else key_mask[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def _splash_attention(q, k, v, key_mask=None):
  if jax.default_backend() != "tpu":
    raise RuntimeError("attention='splash' needs a TPU backend; use 'xla' or 'chunked' here")
  if key_mask is not None:
    raise NotImplementedError(
        "attention='splash' does not take key masks here; pad-free batches (all samples with a "
        "modality stream) are required, or use attention='xla'/'chunked'")
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as splash, splash_attention_mask as masks)
  num_heads, seq_q, seq_k = q.shape[2], q.shape[1], k.shape[1]
  mask = masks.MultiHeadMask([masks.FullMask((seq_q, seq_k)) for _ in range(num_heads)])
  kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
  scale = q.shape[-1] ** -0.5
  to_heads_first = lambda x: x.transpose(0, 2, 1, 3)
  out = jax.vmap(kernel)(to_heads_first(q * scale), to_heads_first(k), to_heads_first(v))
  return out.transpose(0, 2, 1, 3)


def attention(q, k, v, key_mask=None, *, implementation="xla", query_chunk=256, key_chunk=512):
  """Dispatches to one attention implementation. Shapes as in `dot_product_attention`."""
  if implementation == "xla":
    return dot_product_attention(q, k, v, key_mask)
  if implementation == "chunked":
    return chunked_attention(q, k, v, key_mask, query_chunk=query_chunk, key_chunk=key_chunk)
  if implementation == "cudnn":
    return _cudnn_attention(q, k, v, key_mask)
  if implementation == "splash":
    return _splash_attention(q, k, v, key_mask)
  raise ValueError(f"unknown attention implementation {implementation!r}; "
                   f"expected one of {list(IMPLEMENTATIONS)}")
