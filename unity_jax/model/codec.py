"""Codecs between pixel videos and the latent grids the DiT denoises.

A codec maps uint8 videos [B, T, H, W, 3] to float latents [B, F', H', W', C] and back.
`PixelCodec` is the embedded default: an exact space-to-depth rearrangement with Wan's causal
temporal layout (frame 0 alone, then groups of `temporal_stride` frames), so T = 1 + k·stride
frames give F' = 1 + k latent frames. The Wan video VAE plugs in behind the same interface.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


class StridedCodec:
  """The shape rules every codec shares: Wan's causal 1 + k·temporal_stride frames and frames
  divisible by spatial_stride. Subclasses define `name`, `spatial_stride`, `temporal_stride`,
  `latent_channels`, `encode` and `decode`."""

  def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(F', H', W', C) for a video of `frames` x `height` x `width`; validates divisibility."""
    self.check_video_shape(frames, height, width)
    s, ts = self.spatial_stride, self.temporal_stride
    return 1 + (frames - 1) // ts, height // s, width // s, self.latent_channels

  def check_video_shape(self, frames: int, height: int, width: int) -> None:
    if frames < 1 or (frames - 1) % self.temporal_stride:
      raise ValueError(f"frames={frames} must be 1 + k*{self.temporal_stride} for the "
                       f"{self.name} codec")
    for name, size in (("height", height), ("width", width)):
      if size % self.spatial_stride:
        raise ValueError(f"{name}={size} must be divisible by {self.spatial_stride} for the "
                         f"{self.name} codec")

  @staticmethod
  def to_uint8(video):
    """float [-1, 1] -> uint8 [0, 255] with rounding and clipping."""
    return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


@functools.partial(jax.tree_util.register_dataclass, data_fields=[],
                   meta_fields=["spatial_stride", "temporal_stride"])
@dataclasses.dataclass(frozen=True)
class PixelCodec(StridedCodec):
  """Space-to-depth codec: exact inverse, C = 3 · temporal_stride · spatial_stride².

  A pytree without leaves, so it can be passed to jitted functions like the Wan VAE codec.
  """
  spatial_stride: int = 4
  temporal_stride: int = 4
  name = "pixel"

  @property
  def latent_channels(self) -> int:
    return 3 * self.temporal_stride * self.spatial_stride ** 2

  def encode(self, video):
    """uint8 or float [B, T, H, W, 3] (uint8 in [0,255]) -> float32 [B, F', H', W', C] in [-1,1]."""
    xp = jnp if not isinstance(video, np.ndarray) else np
    batch, frames, height, width, _ = video.shape
    f, h, w, _ = self.latent_shape(frames, height, width)
    s, ts = self.spatial_stride, self.temporal_stride
    x = video.astype(xp.float32) / 127.5 - 1.0
    # Causal layout: repeat frame 0 so it fills its own temporal group.
    x = xp.concatenate([xp.repeat(x[:, :1], ts, axis=1), x[:, 1:]], axis=1)
    x = x.reshape(batch, f, ts, h, s, w, s, 3)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(batch, f, h, w, self.latent_channels)

  def decode(self, latents):
    """float [B, F', H', W', C] -> float32 [B, T, H, W, 3] in [-1, 1] (not clipped)."""
    xp = jnp if not isinstance(latents, np.ndarray) else np
    batch, f, h, w, _ = latents.shape
    s, ts = self.spatial_stride, self.temporal_stride
    x = latents.reshape(batch, f, h, w, ts, s, s, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(batch, f * ts, h * s, w * s, 3)
    # Frame 0 was repeated ts times; average the copies (exact for encoded inputs).
    first = x[:, :ts].mean(axis=1, keepdims=True)
    return xp.concatenate([first, x[:, ts:]], axis=1).astype(xp.float32)


def make_codec(config):
  """Builds the codec named by `config.codec.name`: PixelCodec, or the Wan VAE
  (unity_jax/wan/vae_codec.py) loaded from `config.codec.weights` and checked against
  config.codec (name, latent_channels, spatial_stride, temporal_stride)."""
  if config.codec.name == "pixel":
    return PixelCodec(config.codec.spatial_stride, config.codec.temporal_stride)
  if config.codec.name in ("wan2.1_vae", "wan2.2_vae"):
    from unity_jax.wan import vae_codec  # pylint: disable=g-import-not-at-top
    return vae_codec.codec_from_config(config)
  raise ValueError(f"config.codec.name={config.codec.name!r} is not known; expected 'pixel', "
                   "'wan2.1_vae' or 'wan2.2_vae'")


def training_codec(config):
  """The codec argument of the train step: None on precomputed data (data.precomputed), whose
  latents pass through without it, so such a run needs no VAE weights and holds none on
  device; else make_codec(config). Sampling always needs the real codec (make_codec)."""
  if config.data.get("precomputed"):
    return None
  return make_codec(config)
