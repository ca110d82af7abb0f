"""3D rotary position embedding over the joint (frame, height, stream-width) token grid.

UnityVideo concatenates RGB and modality tokens along width: the grid is (f, h, (1+S)·w), RGB
tokens in columns [0, w), the s-th modality stream in [s·w, (s+1)·w). Every token therefore has
a distinct 3D position, and the same spatial location in two streams differs only in its width
coordinate. Following Wan, the per-head dim d is split into temporal / height / width parts of
d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋ channels, each rotated on interleaved pairs (x[2i], x[2i+1]) with
its own frequency ladder θ^(−2i/d_part).
"""

import jax.numpy as jnp
import numpy as np


def rope_split(head_dim: int) -> tuple[int, int, int]:
  """Channels of the (t, h, w) parts of a head of size `head_dim` (Wan's split)."""
  if head_dim % 2:
    raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
  sixth = head_dim // 6
  return head_dim - 4 * sixth, 2 * sixth, 2 * sixth


def grid_positions(frames: int, height: int, width: int, num_streams: int) -> np.ndarray:
  """Integer (f, h, x) positions of every token, stream-major.

  Token order is [stream, f, h, w] flattened; stream s occupies width columns
  [s·width, (s+1)·width) of the joint grid (stream 0 = RGB).

  Returns:
    int32 [num_streams · frames · height · width, 3].
  """
  s, f, h, w = np.meshgrid(
      np.arange(num_streams), np.arange(frames), np.arange(height), np.arange(width),
      indexing="ij")
  positions = np.stack([f, h, s * width + w], axis=-1)
  return positions.reshape(-1, 3).astype(np.int32)


def rope_angles(positions: jnp.ndarray, head_dim: int, theta: float = 10000.0) -> jnp.ndarray:
  """Rotation angles for each token and rotated pair.

  Args:
    positions: int or float [..., N, 3] (f, h, x) coordinates.
    head_dim: per-head channel count d.
  Returns:
    float32 [..., N, d // 2] angles; pair i of the head rotates by angle[..., i].
  """
  parts = []
  for axis, part_dim in enumerate(rope_split(head_dim)):
    inv_freq = 1.0 / (theta ** (np.arange(0, part_dim, 2, dtype=np.float64) / part_dim))
    pos = positions[..., axis].astype(jnp.float32)
    parts.append(pos[..., None] * jnp.asarray(inv_freq, jnp.float32))
  return jnp.concatenate(parts, axis=-1)


def apply_rope(x: jnp.ndarray, angles: jnp.ndarray) -> jnp.ndarray:
  """Rotates interleaved channel pairs of `x` by `angles`.

  Args:
    x: [B, N, heads, d] queries or keys.
    angles: [N, d // 2] or [B, N, d // 2] from `rope_angles`.
  Returns:
    [B, N, heads, d] in x's dtype (rotation computed in float32).
  """
  dtype = x.dtype
  if angles.ndim == 2:
    angles = angles[None]
  # (e, o) -> (e·cos − o·sin, o·cos + e·sin) written as x·cos + swap(x)·(∓sin): elementwise with
  # a pair swap, which XLA fuses into one loop (a stack of the two halves runs 2-3x slower).
  cos = jnp.repeat(jnp.cos(angles), 2, axis=-1)[:, :, None, :]
  signed_sin = (jnp.repeat(jnp.sin(angles), 2, axis=-1)
                * jnp.tile(jnp.array([-1.0, 1.0], jnp.float32), angles.shape[-1]))[:, :, None, :]
  x = x.astype(jnp.float32)
  swapped = x.reshape(*x.shape[:-1], -1, 2)[..., ::-1].reshape(x.shape)
  return (x * cos + swapped * signed_sin).astype(dtype)
