"""Multi-head attention kernels behind one function, selected by config.

Implementations (all take [B, N, heads, d] inputs and an optional key mask, per key [B, Nk] or
per equal segment of keys [B, S], e.g. one flag per stream):
- "xla":      plain dot-product attention, softmax in float32. Default on CPU; O(N²) memory.
- "chunked":  memory-efficient attention (online softmax over key chunks, scanned over query
              chunks); activation memory grows linearly with sequence length beyond
              MAX_UNROLLED_TILES tiles.
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
# Up to this many query x key tiles the chunked kernel runs as straight-line code instead of
# while loops, and keeps every tile's probabilities from the forward pass for the backward.
# XLA:CPU runs a while loop's iterations one after another, slicing tiles in and out of loop
# buffers; straight-line tiles drop those copies and overlap (small, 2 x 2 tiles: 9.2-9.6 vs
# 10.5 s per step), and the kept probabilities spare the backward its score matmul and
# exponential (small: 10.39 -> 10.15 s, steps alternated in one process). The price is memory:
# all tiles may be alive at once (small's step temporaries 3.3 -> 5.5 GiB). Longer sequences
# keep the rolled loops and recompute the probabilities, so the graph stays small and memory
# linear in length.
MAX_UNROLLED_TILES = 16


def expand_key_mask(key_mask, num_keys):
  """bool [B, Nk], or [B, S] with one flag per S equal segments of keys -> bool [B, Nk]."""
  segments = key_mask.shape[1]
  if segments == num_keys:
    return key_mask
  if num_keys % segments:
    raise ValueError(f"key_mask has {segments} entries per sample; expected one per key "
                     f"({num_keys}) or per equal segment of keys (a divisor of {num_keys})")
  return jnp.repeat(key_mask, num_keys // segments, axis=1)


def dot_product_attention(q, k, v, key_mask=None):
  """Reference attention. q: [B, Nq, H, d]; k, v: [B, Nk, H, d]; key_mask: bool [B, Nk] or
  [B, S] (one flag per segment of Nk / S keys, see `expand_key_mask`)."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if key_mask is not None:
    key_mask = expand_key_mask(key_mask, k.shape[1])
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

  Never materialises the [Nq, Nk] logits at once: the forward works on one
  [B, H, query_chunk, key_chunk] tile at a time and saves the output and the log-sum-exp per
  query; the backward (custom VJP) rebuilds each tile's probabilities from that log-sum-exp and
  accumulates dq, dk, dv in one sweep. Sequences of at most MAX_UNROLLED_TILES tiles keep the
  forward's tile probabilities instead of rebuilding them. Activation memory is linear in
  sequence length beyond that, and on CPU the tiled kernel is ~2x faster than the dot-product
  path (benchmarks/train_step.py). Shapes as in `dot_product_attention`; a per-segment key mask
  whose segments are whole key chunks is applied per tile, without a per-key select.
  """
  batch, num_q, heads, dim = q.shape
  num_k = k.shape[1]
  query_chunk = min(query_chunk, num_q)
  key_chunk = min(key_chunk, num_k)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)  # [B, N, H, d] <-> [B, H, N, d]
  q = _pad_to_multiple(heads_first(q) * (dim ** -0.5), 2, query_chunk)
  k = _pad_to_multiple(heads_first(k), 2, key_chunk)
  v = _pad_to_multiple(heads_first(v), 2, key_chunk)
  key_bias = _tile_key_bias(key_mask, batch, num_k, key_chunk)
  unroll = (q.shape[2] // query_chunk) * (k.shape[2] // key_chunk) <= MAX_UNROLLED_TILES
  out = _flash_attention(q, k, v, key_bias, query_chunk, key_chunk, unroll)
  return heads_first(out[:, :, :num_q])


def _tile_key_bias(key_mask, batch, num_k, key_chunk):
  """Additive key bias per key chunk (0 or -inf-like): float32 [Nk / Ck, B, 1, 1, 1] when every
  chunk lies inside one mask segment, else [Nk / Ck, B, 1, 1, Ck] (padding keys are masked)."""
  if key_mask is None:
    key_mask = jnp.ones((batch, 1), bool)
  segments = key_mask.shape[1]
  if num_k % segments == 0 and (num_k // segments) % key_chunk == 0:  # so Ck divides Nk too
    per_chunk = jnp.repeat(key_mask, num_k // segments // key_chunk, axis=1)  # [B, Nk / Ck]
    return jnp.where(per_chunk, 0.0, _NEG_INF).astype(jnp.float32).T[:, :, None, None, None]
  per_key = _pad_to_multiple(expand_key_mask(key_mask, num_k), 1, key_chunk)
  bias = jnp.where(per_key, 0.0, _NEG_INF).astype(jnp.float32)
  return bias.reshape(batch, -1, key_chunk).swapaxes(0, 1)[:, :, None, None, :]


def _blocks(x, chunk):
  """[B, H, N, ...] -> [N / chunk, B, H, chunk, ...] (the scanned axis first)."""
  b, h, n = x.shape[:3]
  return jnp.moveaxis(x.reshape(b, h, n // chunk, chunk, *x.shape[3:]), 2, 0)


def _unblocks(x):
  """Inverse of `_blocks`."""
  x = jnp.moveaxis(x, 0, 2)
  return x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])


def _tile_scores(q_tile, k_tile):
  """[B, H, Cq, d] x [B, H, Ck, d] -> float32 [B, H, Cq, Ck] (q is pre-scaled; no key bias)."""
  return jnp.einsum("bhqd,bhkd->bhqk", q_tile, k_tile, preferred_element_type=jnp.float32)


def _attend_tile(carry, q_tile, k_tile, v_tile, bias_tile):
  """One online-softmax step over a key chunk.

  carry: (acc [B, H, Cq, d], running max [B, H, Cq], denominator [B, H, Cq]), float32.
  Returns the new carry and (probs [B, H, Cq, Ck], the max they are relative to).
  """
  acc, running_max, denom = carry
  scores = _tile_scores(q_tile, k_tile)
  if bias_tile.shape[-1] == 1:  # one bias for the whole chunk: the max needs no select
    tile_max = scores.max(axis=-1) + bias_tile[..., 0]
  else:  # the max reads the scores through a select: `scores + bias` is never written out
    tile_max = jnp.where(bias_tile < 0, _NEG_INF, scores).max(axis=-1)
  new_max = jnp.maximum(running_max, tile_max)
  correction = jnp.exp(running_max - new_max)
  probs = jnp.exp(scores + bias_tile - new_max[..., None])
  denom = denom * correction + probs.sum(axis=-1)
  acc = acc * correction[..., None] + jnp.einsum(
      "bhqk,bhkd->bhqd", probs, v_tile, preferred_element_type=jnp.float32)
  return (acc, new_max, denom), (probs, new_max)


def _finish_rows(carry, dtype):
  """Online-softmax carry -> (out [B, H, Cq, d], log-sum-exp float32 [B, H, Cq])."""
  acc, running_max, denom = carry
  denom = jnp.maximum(denom, 1e-30)
  return (acc / denom[..., None]).astype(dtype), running_max + jnp.log(denom)


def _init_rows(q_tile):
  shape = q_tile.shape[:3]
  return (jnp.zeros(q_tile.shape, jnp.float32), jnp.full(shape, _NEG_INF, jnp.float32),
          jnp.zeros(shape, jnp.float32))


def _flash_forward(q, k, v, key_bias, query_chunk, key_chunk, unroll):
  """q: [B, H, Nq, d] (scaled); k, v: [B, H, Nk, d] -> (out [B, H, Nq, d], lse f32 [B, H, Nq],
  kept): with `unroll`, kept[i][j] = (probs, max) of query chunk i x key chunk j, else None."""
  q_blocks = _blocks(q, query_chunk)
  k_blocks, v_blocks = _blocks(k, key_chunk), _blocks(v, key_chunk)
  if not unroll:
    def attend_query_chunk(_, q_tile):
      step = lambda carry, kv: (_attend_tile(carry, q_tile, *kv)[0], None)
      carry, _ = jax.lax.scan(step, _init_rows(q_tile), (k_blocks, v_blocks, key_bias))
      return None, _finish_rows(carry, v.dtype)
    _, (out, lse) = jax.lax.scan(attend_query_chunk, None, q_blocks)
    return _unblocks(out), _unblocks(lse), None
  outs, lses, kept = [], [], []
  for q_tile in q_blocks:
    carry, row = _init_rows(q_tile), []
    for kv in zip(k_blocks, v_blocks, key_bias):
      carry, probs_and_max = _attend_tile(carry, q_tile, *kv)
      row.append(probs_and_max)
    out, lse = _finish_rows(carry, v.dtype)
    outs.append(out)
    lses.append(lse)
    kept.append(row)
  return _unblocks(jnp.stack(outs)), _unblocks(jnp.stack(lses)), kept


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash_attention(q, k, v, key_bias, query_chunk, key_chunk, unroll):
  return _flash_forward(q, k, v, key_bias, query_chunk, key_chunk, unroll)[0]


def _flash_attention_fwd(q, k, v, key_bias, query_chunk, key_chunk, unroll):
  out, lse, kept = _flash_forward(q, k, v, key_bias, query_chunk, key_chunk, unroll)
  return out, (q, k, v, key_bias, out, lse, kept)


def _tile_gradients(probs, factor, query_tiles, k_tile, v_tile):
  """Gradient parts of one tile, FlashAttention-2 style: dS = P * (dP - rowsum(dO * O)).

  probs: [B, H, Cq, Ck], the tile's softmax probabilities P, or P / factor[..., None] when
  `factor` [B, H, Cq] is given (folded into dO and delta, not applied to the tile);
  query_tiles: (q [B, H, Cq, d], q^T [B, H, d, Cq], dO, dO^T, delta [B, H, Cq]);
  k, v tiles: [B, H, Ck, d]. Returns (dq [B, H, Cq, d], dk^T and dv^T [B, H, d, Ck]).
  dv^T = dO^T P and dk^T = Q^T dS use the transposed query-side operands: XLA:CPU runs
  P^T dO, which contracts P's leading axis, at ~0.55x the speed.
  """
  q_tile, q_tile_t, d_out_tile, d_out_tile_t, delta_tile = query_tiles
  if factor is not None:
    d_out_tile, d_out_tile_t = d_out_tile * factor[..., None], d_out_tile_t * factor[..., None, :]
    delta_tile = delta_tile * factor
  dot = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
  dv_t = dot("bhdq,bhqk->bhdk", d_out_tile_t, probs)
  d_probs = dot("bhqd,bhkd->bhqk", d_out_tile, v_tile)
  d_logits = probs * (d_probs - delta_tile[..., None])
  dq = dot("bhqk,bhkd->bhqd", d_logits, k_tile)
  dk_t = dot("bhdq,bhqk->bhdk", q_tile_t, d_logits)
  return dq, dk_t, dv_t


def _flash_attention_bwd(query_chunk, key_chunk, unroll, residuals, d_out):
  """One sweep over all tiles accumulating dq, dk, dv. Kept probabilities (unrolled) are
  relative to the running max m of their step: P = probs * exp(m - lse), a per-row factor that
  is folded into dO and delta (so into dv, dP and dS) instead of a pass over the tile."""
  q, k, v, key_bias, out, lse, kept = residuals
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, H, Nq]
  # Transposed once here, behind a barrier so XLA does not fold them back into the dots.
  transposed = lambda x: jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))
  q_blocks, d_out_blocks = _blocks(q, query_chunk), _blocks(d_out, query_chunk)
  query_blocks = (q_blocks, transposed(q_blocks), d_out_blocks, transposed(d_out_blocks),
                  _blocks(delta, query_chunk))
  lse_blocks = _blocks(lse, query_chunk)
  key_blocks = (_blocks(k, key_chunk), _blocks(v, key_chunk), key_bias)
  k_tile_shape = key_blocks[0].shape[1:]
  zeros_t = jnp.zeros(k_tile_shape[:2] + k_tile_shape[:1:-1], jnp.float32)  # [B, H, d, Ck]
  if unroll:
    dq = [jnp.zeros(q_tile.shape, jnp.float32) for q_tile in q_blocks]
    dk_t, dv_t = [zeros_t] * len(key_bias), [zeros_t] * len(key_bias)
    for i, (query_tiles, lse_tile) in enumerate(zip(zip(*query_blocks), lse_blocks)):
      for j, (k_tile, v_tile, _) in enumerate(zip(*key_blocks)):
        probs, tile_max = kept[i][j]
        parts = _tile_gradients(probs, jnp.exp(tile_max - lse_tile), query_tiles, k_tile, v_tile)
        dq[i], dk_t[j], dv_t[j] = dq[i] + parts[0], dk_t[j] + parts[1], dv_t[j] + parts[2]
    dq, dk_t, dv_t = jnp.stack(dq), jnp.stack(dk_t), jnp.stack(dv_t)
  else:
    def key_chunk_step(dq, kv):
      k_tile, v_tile, bias_tile = kv

      def query_chunk_step(carry, inputs):
        query_tiles, lse_tile, dq_tile = inputs
        probs = jnp.exp(_tile_scores(query_tiles[0], k_tile) + bias_tile - lse_tile[..., None])
        parts = _tile_gradients(probs, None, query_tiles, k_tile, v_tile)
        return (carry[0] + parts[1], carry[1] + parts[2]), dq_tile + parts[0]

      (dk_t, dv_t), dq = jax.lax.scan(query_chunk_step, (zeros_t, zeros_t),
                                      (query_blocks, lse_blocks, dq))
      return dq, (dk_t, dv_t)

    dq = jnp.zeros(q_blocks.shape, jnp.float32)
    dq, (dk_t, dv_t) = jax.lax.scan(key_chunk_step, dq, key_blocks)
  to_keys = lambda x_t, dtype: _unblocks(jnp.swapaxes(x_t, -1, -2)).astype(dtype)
  return (_unblocks(dq).astype(q.dtype), to_keys(dk_t, k.dtype), to_keys(dv_t, v.dtype),
          jnp.zeros_like(key_bias))


_flash_attention.defvjp(_flash_attention_fwd, _flash_attention_bwd)


def _cudnn_attention(q, k, v, key_mask=None):
  if jax.default_backend() != "gpu":
    raise RuntimeError("attention='cudnn' needs a GPU backend; use 'xla' or 'chunked' here")
  mask = None if key_mask is None else expand_key_mask(key_mask, k.shape[1])[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def _splash_attention(q, k, v, key_mask=None):
  if jax.default_backend() != "tpu":
    raise RuntimeError("attention='splash' needs a TPU backend; use 'xla' or 'chunked' here")
  if key_mask is not None:
    raise NotImplementedError(
        "attention='splash' does not take key masks here; pad-free batches (all samples with a "
        "modality stream) are required, or use attention='xla'/'chunked'")
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu.splash_attention import (
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
