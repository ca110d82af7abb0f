"""3D RoPE and the attention kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unity_jax.model import attention as attention_lib
from unity_jax.model import rope


def _logits(q, k, positions_q, positions_k, head_dim):
  qr = rope.apply_rope(q, rope.rope_tables(rope.rope_angles(jnp.asarray(positions_q), head_dim)))
  kr = rope.apply_rope(k, rope.rope_tables(rope.rope_angles(jnp.asarray(positions_k), head_dim)))
  return jnp.einsum("bqhd,bkhd->bhqk", qr, kr)


def test_rope_logits_depend_only_on_relative_positions():
  head_dim = 24
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, head_dim)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, head_dim)), jnp.float32)
  pos_q, pos_k = np.array([[2, 3, 5]]), np.array([[1, 7, 2]])
  base = _logits(q, k, pos_q, pos_k, head_dim)
  for shift in ([3, 0, 0], [0, 4, 0], [0, 0, 9], [5, 2, 11]):
    shifted = _logits(q, k, pos_q + shift, pos_k + shift, head_dim)
    np.testing.assert_allclose(shifted, base, atol=1e-4)
  # ... and they do change when only one side moves (the positions are actually used).
  moved = _logits(q, k, pos_q + np.array([0, 0, 3]), pos_k, head_dim)
  assert float(jnp.abs(moved - base).max()) > 1e-3


def test_rope_split_matches_wan():
  assert rope.rope_split(128) == (44, 42, 42)
  assert rope.rope_split(24) == (8, 8, 8)
  with pytest.raises(ValueError, match="even"):
    rope.rope_split(7)


def test_rgb_and_modality_tokens_get_distinct_positions():
  frames, height, width, streams = 3, 4, 5, 3
  positions = rope.grid_positions(frames, height, width, streams)
  assert positions.shape == (streams * frames * height * width, 3)
  assert len({tuple(p) for p in positions}) == len(positions)
  n = frames * height * width
  rgb, modality = positions[:n], positions[n:2 * n]
  # Same (f, h, x) location in the RGB and first modality stream: same f, h; x shifted by w.
  np.testing.assert_array_equal(rgb[:, :2], modality[:, :2])
  np.testing.assert_array_equal(modality[:, 2], rgb[:, 2] + width)
  assert rgb[:, 2].max() == width - 1 and positions[:, 2].max() == streams * width - 1


def test_rope_is_a_rotation():
  x = jax.random.normal(jax.random.key(0), (2, 10, 3, 12))
  angles = rope.rope_angles(jnp.asarray(rope.grid_positions(2, 1, 5, 1)), 12)
  y = rope.apply_rope(x, rope.rope_tables(angles))
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)


# 5 x 5 tiles (rolled loops), 4 x 4 and 1 x 5 (unrolled, attention.MAX_UNROLLED_TILES).
@pytest.mark.parametrize("num_q,num_k,chunk", [(37, 37, 8), (64, 50, 16), (10, 130, 32)])
def test_chunked_attention_matches_dot_product(num_q, num_k, chunk):
  keys = jax.random.split(jax.random.key(1), 4)
  q = jax.random.normal(keys[0], (2, num_q, 3, 16))
  k = jax.random.normal(keys[1], (2, num_k, 3, 16))
  v = jax.random.normal(keys[2], (2, num_k, 3, 16))
  mask = jax.random.bernoulli(keys[3], 0.7, (2, num_k)).at[:, 0].set(True)
  for key_mask in (None, mask):
    ref = attention_lib.attention(q, k, v, key_mask, implementation="xla")
    out = attention_lib.attention(q, k, v, key_mask, implementation="chunked", query_chunk=chunk,
                                  key_chunk=chunk)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("chunk", [16, 8])  # 3 x 3 tiles (unrolled loops), 5 x 5 (rolled)
def test_chunked_attention_gradients_match(chunk):
  keys = jax.random.split(jax.random.key(2), 3)
  q, k, v = (jax.random.normal(key, (1, 40, 2, 8)) for key in keys)
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(attention_lib.attention(
      q, k, v, implementation=impl, query_chunk=chunk, key_chunk=chunk)))
  ref = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  out = jax.grad(loss("chunked"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, atol=1e-5)


# Segment masks (one flag per stream, as the DiT passes them): segments of whole key chunks
# take the per-chunk bias path, others the per-key one; unrolled (2 x 4, 2 x 3 tiles) and
# rolled (4 x 8) loops; sample 0 has its first segment masked, so the online softmax must
# discard a fully masked first chunk.
@pytest.mark.parametrize("num_k,segments,query_chunk,key_chunk",
                         [(64, 4, 16, 16), (64, 2, 16, 24), (64, 4, 8, 8)])
def test_chunked_attention_segment_masks_match_in_values_and_gradients(num_k, segments,
                                                                       query_chunk, key_chunk):
  keys = jax.random.split(jax.random.key(3), 4)
  q = jax.random.normal(keys[0], (2, 32, 2, 8))
  k = jax.random.normal(keys[1], (2, num_k, 2, 8)) * 3
  v = jax.random.normal(keys[2], (2, num_k, 2, 8))
  segment_mask = jnp.ones((2, segments), bool).at[0, 0].set(False).at[1, -1].set(False)
  key_mask = attention_lib.expand_key_mask(segment_mask, num_k)
  assert key_mask.shape == (2, num_k) and int(key_mask.sum()) == 2 * num_k - 2 * num_k // segments
  # Huge masked keys: a softmax max taken over them would underflow every valid probability.
  k = jnp.where(key_mask[:, :, None, None], k, 1e3 * k)
  weights = jax.random.normal(keys[3], (2, 32, 2, 8))
  loss = lambda impl, mask: lambda q, k, v: jnp.sum(weights * attention_lib.attention(
      q, k, v, mask, implementation=impl, query_chunk=query_chunk, key_chunk=key_chunk))
  ref = jax.value_and_grad(loss("xla", key_mask), argnums=(0, 1, 2))(q, k, v)
  for mask in (segment_mask, key_mask):
    out = jax.value_and_grad(loss("chunked", mask), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-5)
    for a, b in zip(out[1], ref[1]):
      np.testing.assert_allclose(a, b, atol=1e-5)
  # Masked keys get no gradient.
  np.testing.assert_array_equal(out[1][1][~key_mask], 0.0)


def test_key_masks_of_the_wrong_length_fail_clearly():
  with pytest.raises(ValueError, match="3 entries per sample.*divisor of 64"):
    attention_lib.expand_key_mask(jnp.ones((2, 3), bool), 64)


def test_chunked_attention_memory_grows_linearly():
  """Peak temp bytes of the compiled kernel: ~2x for 2x tokens (quadratic would be ~4x)."""
  def temp_bytes(n):
    q = jax.ShapeDtypeStruct((1, n, 2, 16), jnp.float32)
    fn = jax.jit(lambda q, k, v: attention_lib.chunked_attention(q, k, v, query_chunk=64,
                                                                 key_chunk=64))
    return fn.lower(q, q, q).compile().memory_analysis().temp_size_in_bytes
  small, large = temp_bytes(2048), temp_bytes(8192)
  assert large / small < 6.0, (small, large)  # 4x tokens: linear ~4x, quadratic ~16x.


def test_unknown_and_unavailable_implementations_fail_clearly():
  x = jnp.zeros((1, 4, 1, 8))
  with pytest.raises(ValueError, match="unknown attention implementation"):
    attention_lib.attention(x, x, x, implementation="flash9")
  with pytest.raises(RuntimeError, match="needs a TPU"):
    attention_lib.attention(x, x, x, implementation="splash")
  with pytest.raises(RuntimeError, match="needs a GPU"):
    attention_lib.attention(x, x, x, implementation="cudnn")
