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
# Up to this many query x key tiles the chunked kernel's loops are unrolled. XLA:CPU runs a
# while loop's iterations one after another, slicing tiles in and out of loop buffers; a
# straight-line graph of a few tiles drops those copies and lets independent tiles overlap
# (small, 2 x 2 tiles: 9.2-9.6 vs 10.5 s per step). The price is memory: XLA may keep all
# tiles alive at once (small's step temporaries 3.3 -> 5.5 GiB). Longer sequences keep the
# rolled loops, so the compiled graph stays small and memory stays linear in length.
MAX_UNROLLED_TILES = 16


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
  """Memory-efficient attention: flash-style online softmax forward and a fused backward.

  Never materialises the [Nq, Nk] logits, in either pass: the forward keeps one
  [B, H, query_chunk, key_chunk] tile at a time (up to MAX_UNROLLED_TILES with unrolled loops)
  and saves only the output and the log-sum-exp per query;
  the backward (custom VJP, FlashAttention-2 order) recomputes each tile's probabilities from
  that log-sum-exp and accumulates dq, dk, dv in one sweep. Activation memory is linear in
  sequence length, and tiles small enough for the CPU caches make it ~2x faster than the
  dot-product path there (benchmarks/train_step.py). Shapes as in `dot_product_attention`.
  """
  batch, num_q, heads, dim = q.shape
  num_k = k.shape[1]
  if key_mask is None:
    key_mask = jnp.ones((batch, num_k), bool)
  query_chunk = min(query_chunk, num_q)
  key_chunk = min(key_chunk, num_k)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)  # [B, N, H, d] <-> [B, H, N, d]
  q = _pad_to_multiple(heads_first(q) * (dim ** -0.5), 2, query_chunk)
  k = _pad_to_multiple(heads_first(k), 2, key_chunk)
  v = _pad_to_multiple(heads_first(v), 2, key_chunk)
  # Masked and padding keys get -inf-like logits (padding is False in the padded mask).
  key_bias = jnp.where(_pad_to_multiple(key_mask, 1, key_chunk), 0.0, _NEG_INF).astype(jnp.float32)
  unroll = (q.shape[2] // query_chunk) * (k.shape[2] // key_chunk) <= MAX_UNROLLED_TILES
  out = _flash_attention(q, k, v, key_bias, query_chunk, key_chunk, unroll)
  return heads_first(out[:, :, :num_q])


def _blocks(x, chunk):
  """[B, H, N, ...] -> [N / chunk, B, H, chunk, ...] (the scanned axis first)."""
  b, h, n = x.shape[:3]
  return jnp.moveaxis(x.reshape(b, h, n // chunk, chunk, *x.shape[3:]), 2, 0)


def _unblocks(x):
  """Inverse of `_blocks`."""
  x = jnp.moveaxis(x, 0, 2)
  return x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])


def _key_blocks(k, v, key_bias, key_chunk):
  """k, v: [B, H, Nk, d]; key_bias: [B, Nk] -> per-chunk (k, v, bias [nk, B, 1, 1, Ck])."""
  bias = key_bias.reshape(key_bias.shape[0], -1, key_chunk).swapaxes(0, 1)[:, :, None, None, :]
  return _blocks(k, key_chunk), _blocks(v, key_chunk), bias


def _tile_scores(q_tile, k_tile):
  """[B, H, Cq, d] x [B, H, Ck, d] -> float32 [B, H, Cq, Ck] (q is pre-scaled; no key bias)."""
  return jnp.einsum("bhqd,bhkd->bhqk", q_tile, k_tile, preferred_element_type=jnp.float32)


def _flash_forward(q, k, v, key_bias, query_chunk, key_chunk, unroll):
  """q: [B, H, Nq, d] (scaled); k, v: [B, H, Nk, d] -> (out [B, H, Nq, d], lse f32 [B, H, Nq])."""
  key_blocks = _key_blocks(k, v, key_bias, key_chunk)

  def attend_query_chunk(q_tile):  # [B, H, Cq, d] -> ([B, H, Cq, d], [B, H, Cq])
    def step(carry, kv):
      acc, running_max, denom = carry
      k_tile, v_tile, bias_tile = kv
      scores = _tile_scores(q_tile, k_tile)
      # The row max reads the scores through a select and the exp adds the bias itself, so
      # XLA never writes `scores + bias` out as a separate tile (small: ~8% faster step).
      tile_max = jnp.where(bias_tile < 0, _NEG_INF, scores).max(axis=-1)
      new_max = jnp.maximum(running_max, tile_max)
      correction = jnp.exp(running_max - new_max)
      probs = jnp.exp(scores + bias_tile - new_max[..., None])
      denom = denom * correction + probs.sum(axis=-1)
      acc = acc * correction[..., None] + jnp.einsum(
          "bhqk,bhkd->bhqd", probs, v_tile, preferred_element_type=jnp.float32)
      return (acc, new_max, denom), None

    shape = q_tile.shape[:3]
    init = (jnp.zeros(q_tile.shape, jnp.float32), jnp.full(shape, _NEG_INF, jnp.float32),
            jnp.zeros(shape, jnp.float32))
    (acc, running_max, denom), _ = jax.lax.scan(step, init, key_blocks, unroll=unroll)
    denom = jnp.maximum(denom, 1e-30)
    return (acc / denom[..., None]).astype(v.dtype), running_max + jnp.log(denom)

  _, (out, lse) = jax.lax.scan(lambda _, q_tile: (None, attend_query_chunk(q_tile)), None,
                               _blocks(q, query_chunk), unroll=unroll)
  return _unblocks(out), _unblocks(lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash_attention(q, k, v, key_bias, query_chunk, key_chunk, unroll):
  return _flash_forward(q, k, v, key_bias, query_chunk, key_chunk, unroll)[0]


def _flash_attention_fwd(q, k, v, key_bias, query_chunk, key_chunk, unroll):
  out, lse = _flash_forward(q, k, v, key_bias, query_chunk, key_chunk, unroll)
  return out, (q, k, v, key_bias, out, lse)


def _flash_attention_bwd(query_chunk, key_chunk, unroll, residuals, d_out):
  """One sweep over key chunks (outer) and query chunks (inner): dk, dv accumulate in the inner
  carry, dq in the outer one. P = exp(s - lse), dS = P * (dP - rowsum(dO * O))."""
  q, k, v, key_bias, out, lse = residuals
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, H, Nq]
  query_blocks = (_blocks(q, query_chunk), _blocks(d_out, query_chunk),
                  _blocks(lse, query_chunk), _blocks(delta, query_chunk))

  def key_chunk_step(dq, kv):
    k_tile, v_tile, bias_tile = kv

    def query_chunk_step(carry, inputs):
      dk, dv = carry
      (q_tile, d_out_tile, lse_tile, delta_tile), dq_tile = inputs
      probs = jnp.exp(_tile_scores(q_tile, k_tile) + bias_tile - lse_tile[..., None])
      dv = dv + jnp.einsum("bhqk,bhqd->bhkd", probs, d_out_tile,
                           preferred_element_type=jnp.float32)
      d_probs = jnp.einsum("bhqd,bhkd->bhqk", d_out_tile, v_tile,
                           preferred_element_type=jnp.float32)
      d_logits = probs * (d_probs - delta_tile[..., None])
      dq_tile = dq_tile + jnp.einsum("bhqk,bhkd->bhqd", d_logits, k_tile,
                                     preferred_element_type=jnp.float32)
      dk = dk + jnp.einsum("bhqk,bhqd->bhkd", d_logits, q_tile,
                           preferred_element_type=jnp.float32)
      return (dk, dv), dq_tile

    zeros = jnp.zeros(k_tile.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(query_chunk_step, (zeros, zeros), (query_blocks, dq),
                                 unroll=unroll)
    return dq, (dk, dv)

  dq = jnp.zeros((q.shape[2] // query_chunk,) + q.shape[:2] + (query_chunk, q.shape[3]),
                 jnp.float32)
  dq, (dk, dv) = jax.lax.scan(key_chunk_step, dq, _key_blocks(k, v, key_bias, key_chunk),
                              unroll=unroll)
  return (_unblocks(dq).astype(q.dtype), _unblocks(dk).astype(k.dtype),
          _unblocks(dv).astype(v.dtype), jnp.zeros_like(key_bias))


_flash_attention.defvjp(_flash_attention_fwd, _flash_attention_bwd)


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
