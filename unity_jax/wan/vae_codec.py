"""The Wan VAE behind the codec interface of unity_jax/model/codec.py, with spatial tiling and
batch sharding.

`WanVAECodec` is a pytree: its params are the children and the static geometry and tiling are
aux data, so a jitted train step can take the codec as an argument (weights as inputs, not as
constants baked into the program) and `encode`/`decode` trace inside it. Outside a jit they
call module-level jitted functions keyed on the static arguments, so each video shape compiles
once.

Latents. `encode` returns the posterior mean normalised per channel,
(mu - latents_mean) / latents_std, the scale the Wan DiT was trained on; `decode` undoes it.
Videos are uint8 (or float) on the [0, 255] scale like PixelCodec; decoded videos are float32
in [-1, 1] (clipped, as the reference).

Tiling (optional: `tile` and `overlap` in latent pixels). Frames are cut into equal tiles (the
last row/column ends at the frame edge, so all tiles share one shape and one compiled body)
which run one after another under `lax.scan`: memory holds the output plus one tile's
activations. Outputs are blended where tiles overlap with linear ramps over `overlap` latent
pixels (overlap x stride output pixels when decoding), normalised by the summed weights. Tiles
do not see their neighbours, so tiled results differ from untiled ones near seams (tests bound
the difference).

Sharding (optional `mesh`): the batch axis is constrained to the mesh's data axes ("data" and
"fsdp" if present, else all axes) and params are replicated; time is not sharded because the
causal chunks run in sequence.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from unity_jax.model import codec as codec_lib
from unity_jax.wan import vae as vae_lib
from unity_jax.wan import vae_weights
from unity_jax.wan.safetensors_io import CheckpointError


# ----------------------------------------------------------------------------------- tiling ---

def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
  """Offsets of `tile`-wide windows covering [0, size), stepping tile - overlap, the last one
  moved back to end at `size` (so it may overlap its neighbour by more than `overlap`)."""
  if tile >= size:
    return [0]
  if not 0 <= overlap < tile:
    raise ValueError(f"tile overlap {overlap} must be in [0, tile={tile})")
  return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _ramps(starts, tile, size, ramp) -> np.ndarray:
  """Per-tile blend weights [n, tile]: linear ramps of width `ramp` on interior edges."""
  pos = np.arange(tile) + 0.5
  weights = np.ones((len(starts), tile), np.float32)
  for i, start in enumerate(starts):
    if ramp and start > 0:
      weights[i] = np.minimum(weights[i], pos / ramp)
    if ramp and start + tile < size:
      weights[i] = np.minimum(weights[i], (tile - pos) / ramp)
  return weights


def spatial_tiled(fn, x, tile: int, overlap: int, in_scale: int, out_scale: int):
  """fn over overlapping spatial tiles of x, blended.

  x: [B, T, H, W, C] with H, W multiples of in_scale; tile/overlap in units of in_scale input
  pixels (= out_scale output pixels); fn maps [B, T, th, tw, C] to
  [B, T', th / in_scale * out_scale, tw / in_scale * out_scale, C'].
  """
  b, t, hh, ww, c = x.shape
  h, w = hh // in_scale, ww // in_scale
  th, tw = min(tile, h), min(tile, w)
  ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
  if len(ys) == 1 and len(xs) == 1:
    return fn(x)
  tile_in = (b, t, th * in_scale, tw * in_scale, c)
  out = jax.eval_shape(fn, jax.ShapeDtypeStruct(tile_in, x.dtype))
  wy = _ramps(ys, th * out_scale, h * out_scale, overlap * out_scale)
  wx = _ramps(xs, tw * out_scale, w * out_scale, overlap * out_scale)
  grid = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
  total = np.zeros((h * out_scale, w * out_scale), np.float32)
  for iy, ix in grid:
    total[ys[iy] * out_scale:(ys[iy] + th) * out_scale,
          xs[ix] * out_scale:(xs[ix] + tw) * out_scale] += np.outer(wy[iy], wx[ix])
  steps = (np.array([ys[iy] for iy, _ in grid], np.int32),
           np.array([xs[ix] for _, ix in grid], np.int32),
           wy[[iy for iy, _ in grid]], wx[[ix for _, ix in grid]])

  def body(acc, step):
    sy, sx, wyi, wxi = step
    y = fn(lax.dynamic_slice(x, (0, 0, sy * in_scale, sx * in_scale, 0), tile_in))
    at = (0, 0, sy * out_scale, sx * out_scale, 0)
    y = lax.dynamic_slice(acc, at, y.shape) + y * (wyi[:, None] * wxi[None, :])[..., None]
    return lax.dynamic_update_slice(acc, y, at), None

  acc = jnp.zeros((b, out.shape[1], h * out_scale, w * out_scale, out.shape[-1]), out.dtype)
  acc, _ = lax.scan(body, acc, steps)
  return acc / total[..., None]


# ---------------------------------------------------------------------- jitted entry points ---

def batch_sharding(mesh) -> NamedSharding:
  """Batch axis over the mesh's data axes ("data", "fsdp" when present, else all axes)."""
  axes = tuple(a for a in mesh.axis_names if a in ("data", "fsdp")) or tuple(mesh.axis_names)
  return NamedSharding(mesh, P(axes))


def _constrain(x, mesh):
  if mesh is None:
    return x
  sharding = batch_sharding(mesh)
  size = int(np.prod([mesh.shape[a] for a in sharding.spec[0]]))
  if x.shape[0] % size:
    raise ValueError(f"batch {x.shape[0]} is not divisible by the {size} devices of the mesh "
                     f"axes {sharding.spec[0]}")
  return lax.with_sharding_constraint(x, sharding)


@functools.partial(jax.jit, static_argnames=("cfg", "tiling", "mesh", "chunked"))
def encode_pixels(params, video, cfg, tiling=None, mesh=None, chunked=True):
  """Normalised posterior mean of float pixels [B, T, H, W, 3] in [-1, 1] -> [B, F, h, w, z].

  tiling: None or (tile, overlap) in latent pixels; mesh: shard the batch over its data axes.
  """
  video = _constrain(video.astype(jnp.float32), mesh)
  fn = functools.partial(vae_lib.encode_mean, params, cfg, chunked=chunked)
  if tiling:
    mu = spatial_tiled(fn, video, tiling[0], tiling[1], cfg.spatial_stride, 1)
  else:
    mu = fn(video)
  return _constrain(vae_lib.normalize(cfg, mu), mesh)


@functools.partial(jax.jit, static_argnames=("cfg", "tiling", "mesh", "chunked"))
def decode_pixels(params, latents, cfg, tiling=None, mesh=None, chunked=True):
  """Normalised latents [B, F, h, w, z] -> float32 pixels [B, 1 + 4(F-1), H, W, 3] in [-1, 1]."""
  z = vae_lib.denormalize(cfg, _constrain(latents.astype(jnp.float32), mesh))
  fn = functools.partial(vae_lib.decode_latents, params, cfg, chunked=chunked, clip=False)
  if tiling:
    video = spatial_tiled(fn, z, tiling[0], tiling[1], 1, cfg.spatial_stride)
  else:
    video = fn(z)
  return _constrain(jnp.clip(video, -1.0, 1.0), mesh)


# ------------------------------------------------------------------------------------ codec ---

@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"],
                   meta_fields=["config", "tiling"])
@dataclasses.dataclass(frozen=True)
class WanVAECodec(codec_lib.StridedCodec):
  """Wan VAE codec: uint8 videos [B, T, H, W, 3] <-> normalised latents [B, F', H', W', C].

  tiling: None, or (tile, overlap) in latent pixels for spatially tiled encode and decode.
  """
  params: dict
  config: vae_lib.VAEConfig
  tiling: tuple | None = None

  @property
  def name(self) -> str:
    return self.config.generation

  @property
  def latent_channels(self) -> int:
    return self.config.z_dim

  @property
  def spatial_stride(self) -> int:
    return self.config.spatial_stride

  @property
  def temporal_stride(self) -> int:
    return self.config.temporal_stride

  def encode(self, video, mesh=None):
    """uint8 or float [B, T, H, W, 3] on the [0, 255] scale -> float32 normalised latents
    [B, F', H', W', C] (posterior mean). Traceable under jit."""
    self.check_video_shape(*video.shape[1:4])
    pixels = jnp.asarray(video).astype(jnp.float32) / 127.5 - 1.0
    return encode_pixels(self.params, pixels, self.config, self.tiling, mesh)

  def decode(self, latents, mesh=None):
    """float [B, F', H', W', C] normalised latents -> float32 [B, T, H, W, 3] in [-1, 1]."""
    return decode_pixels(self.params, jnp.asarray(latents), self.config, self.tiling, mesh)


def load_vae(vae_dir: str, tiling: tuple | None = None) -> WanVAECodec:
  """WanVAECodec from a diffusers AutoencoderKLWan directory (config.json + safetensors)."""
  cfg, params = vae_weights.load_params(vae_dir)
  return WanVAECodec(jax.tree.map(jnp.asarray, params), cfg, tiling)


def codec_from_config(config) -> WanVAECodec:
  """make_codec's Wan branch: loads config.codec.weights and checks it against config.codec."""
  codec = config.codec
  weights = codec.get("weights", "")
  if not weights or not os.path.isdir(weights):
    raise ValueError(f"config.codec.weights={weights!r}: the {codec.name} codec needs a diffusers "
                     "AutoencoderKLWan directory (config.json + *.safetensors)")
  tile = int(codec.get("tile", 0) or 0)
  vae = load_vae(weights, (tile, int(codec.get("tile_overlap", 0) or 0)) if tile else None)
  found = {"name": vae.name, "latent_channels": vae.latent_channels,
           "spatial_stride": vae.spatial_stride, "temporal_stride": vae.temporal_stride}
  wrong = [f"config.codec.{k}={codec.get(k)!r} but the checkpoint has {v!r}"
           for k, v in found.items() if codec.get(k) != v]
  if wrong:
    raise CheckpointError(f"config.codec.weights={weights!r} ({vae.name}, z_dim "
                          f"{vae.latent_channels}, stride {vae.temporal_stride}x"
                          f"{vae.spatial_stride}x{vae.spatial_stride}) does not match the "
                          "config: " + "; ".join(wrong))
  return vae
