"""The JAX Wan VAE (unity_jax/wan/vae*.py) against diffusers' AutoencoderKLWan, and its codec.

Parity tests build small random diffusers models (both generations, the released block
structure with narrow widths), save them with save_pretrained, import them, and compare a
9-frame non-square clip: posterior mean and decoded video within 1e-4 of torch float32. The
other tests use tiny JAX-initialised VAEs written in the diffusers layout by `save_vae`.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh

from unity_jax.model import codec as codec_lib
from unity_jax.wan import vae as vae_lib
from unity_jax.wan import vae_codec
from unity_jax.wan import vae_weights
from unity_jax.wan.safetensors_io import (CheckpointError, SafetensorsCheckpoint,
                                          write_safetensors)

PARITY_ATOL = 1e-4      # JAX vs torch float32
CHUNK_ATOL = 1e-5       # chunked (lax.scan) vs whole-clip JAX paths
SHARD_ATOL = 1e-5       # sharded vs unsharded
# Tiled vs untiled decode of TINY (random weights), tile 8 / overlap 4 latent pixels on an
# 8 x 12 latent: measured mean |difference| 0.085 (mean |output| ~0.4), max 1.10. Tiles see
# zeros where the full frame has neighbours; the decoder's receptive field (conv_in, the mid
# block's attention over the whole tile, 3x3 convs at every scale) is wider than the tile and
# random weights have no trained locality, so differences reach the middle of tiles; the blend
# removes the seams, not this. The blending itself is exact (test_tile_blend_is_exact).
TILED_DECODE_MEAN = 0.1
TILED_DECODE_MAX = 1.25

TINY = vae_lib.VAEConfig(base_dim=4, decoder_base_dim=4, z_dim=4, dim_mult=(1, 2, 2),
                         num_res_blocks=1, temperal_downsample=(True, True),
                         latents_mean=(0.1, -0.2, 0.3, 0.0), latents_std=(0.5, 1.0, 2.0, 1.5))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tiny_vae"))
  vae_weights.save_vae(directory, TINY, vae_lib.init_params(TINY, 0))
  return directory


def _diffusers_vae(residual: bool, directory: str):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(0)
  z_dim = 4
  kwargs = dict(base_dim=8, z_dim=z_dim, num_res_blocks=1, temperal_downsample=[False, True, True],
                latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 1.0, 2.0, 1.5])
  if residual:   # Wan2.2: patchified input, residual blocks, wider decoder; stride 4 x 16 x 16
    kwargs.update(dim_mult=[1, 2, 2, 2], is_residual=True, in_channels=12, out_channels=12,
                  patch_size=2, decoder_base_dim=12, scale_factor_spatial=16)
  else:          # Wan2.1: stride 4 x 8 x 8
    kwargs.update(dim_mult=[1, 2, 4, 4])
  model = diffusers.AutoencoderKLWan(**kwargs).eval()
  model.save_pretrained(directory)
  return model


@pytest.mark.parametrize("residual", [False, True], ids=["wan2.1", "wan2.2"])
def test_parity_with_diffusers(residual, tmp_path):
  torch = pytest.importorskip("torch")
  torch.set_num_threads(2)
  model = _diffusers_vae(residual, str(tmp_path))
  codec = vae_codec.load_vae(str(tmp_path))
  cfg = codec.config
  assert cfg.generation == ("wan2.2_vae" if residual else "wan2.1_vae")
  frames, height, width = 9, 32, 48 if not residual else 64
  assert codec.latent_shape(frames, height, width) == (
      3, height // cfg.spatial_stride, width // cfg.spatial_stride, 4)
  gen = torch.Generator().manual_seed(1)
  video = torch.rand(1, 3, frames, height, width, generator=gen) * 2 - 1
  latents = torch.randn(1, 4, 3, height // cfg.spatial_stride, width // cfg.spatial_stride,
                        generator=gen)
  with torch.no_grad():
    mu_ref = model.encode(video).latent_dist.mean.numpy().transpose(0, 2, 3, 4, 1)
    out_ref = model.decode(latents).sample.numpy().transpose(0, 2, 3, 4, 1)
  video, latents = (t.numpy().transpose(0, 2, 3, 4, 1) for t in (video, latents))

  encode = jax.jit(vae_lib.encode_mean, static_argnums=1, static_argnames="chunked")
  decode = jax.jit(vae_lib.decode_latents, static_argnums=1, static_argnames="chunked")
  mu = np.asarray(encode(codec.params, cfg, video))
  out = np.asarray(decode(codec.params, cfg, latents))
  assert np.abs(mu_ref).mean() > 0.05 and np.abs(out_ref).mean() > 0.05   # non-trivial
  np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=PARITY_ATOL)
  np.testing.assert_allclose(out, out_ref, rtol=0, atol=PARITY_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("residual", [False, True], ids=["wan2.1", "wan2.2"])
def test_chunked_equals_unchunked_parity_size(residual, tmp_path):
  """The whole clip at once through the causal convs equals the chunked scan (parity models)."""
  _diffusers_vae(residual, str(tmp_path))
  codec = vae_codec.load_vae(str(tmp_path))
  _check_chunked_equals_unchunked(codec, 32, 48 if not residual else 64)


def _check_chunked_equals_unchunked(codec, height, width):
  cfg, params = codec.config, codec.params
  rng = np.random.default_rng(2)
  video = rng.uniform(-1, 1, (1, 9, height, width, 3)).astype(np.float32)
  latents = rng.standard_normal((1, 3, height // cfg.spatial_stride, width // cfg.spatial_stride,
                                 cfg.z_dim)).astype(np.float32)
  for fn, x in ((vae_lib.encode_mean, video), (vae_lib.decode_latents, latents)):
    fn = jax.jit(fn, static_argnums=1, static_argnames="chunked")
    chunked, whole = fn(params, cfg, x), fn(params, cfg, x, chunked=False)
    assert chunked.shape == whole.shape and float(jnp.abs(chunked).mean()) > 0.05
    np.testing.assert_allclose(np.asarray(whole), np.asarray(chunked), rtol=0, atol=CHUNK_ATOL)


def test_chunked_equals_unchunked(tiny_dir):
  codec = vae_codec.load_vae(tiny_dir)
  _check_chunked_equals_unchunked(codec, 16, 24)
  # The codec's latents are the posterior mean normalised per channel.
  pixels = np.random.default_rng(3).integers(0, 256, (1, 5, 16, 24, 3), dtype=np.uint8)
  mu = jax.jit(vae_lib.encode_mean, static_argnums=1)(codec.params, TINY, pixels / 127.5 - 1)
  mean, std = np.array(TINY.latents_mean), np.array(TINY.latents_std)
  np.testing.assert_allclose(codec.encode(pixels), (mu - mean) / std, rtol=0, atol=1e-5)


def _tensors(directory):
  ckpt = SafetensorsCheckpoint(directory)
  return {k: ckpt.read(k) for k in ckpt.keys()}


@pytest.mark.parametrize("change, message", [
    ("missing", "missing tensor 'decoder.conv_out.bias' (expected shape (3,))"),
    ("unexpected", "unexpected tensor 'encoder.extra.weight' (shape (2,))"),
    ("shape", "tensor 'quant_conv.weight' has shape (8, 8, 1, 1, 2); expected (8, 8, 1, 1, 1)"),
])
def test_import_errors_name_the_key(tiny_dir, tmp_path, change, message):
  tensors = _tensors(tiny_dir)
  if change == "missing":
    del tensors["decoder.conv_out.bias"]
  elif change == "unexpected":
    tensors["encoder.extra.weight"] = np.zeros(2, np.float32)
  else:
    tensors["quant_conv.weight"] = np.zeros((8, 8, 1, 1, 2), np.float32)
  with open(os.path.join(tiny_dir, "config.json")) as f:
    (tmp_path / "config.json").write_text(f.read())
  write_safetensors(str(tmp_path / "diffusion_pytorch_model.safetensors"), tensors)
  with pytest.raises(CheckpointError) as error:
    vae_weights.load_params(str(tmp_path))
  assert message in str(error.value)


def test_export_import_round_trip(tiny_dir):
  cfg, params = vae_weights.load_params(tiny_dir)
  assert cfg == TINY
  reference = vae_lib.init_params(TINY, 0)
  jax.tree.map(np.testing.assert_array_equal, params, jax.tree.map(np.asarray, reference))


def test_codec_under_jit_as_argument(tiny_dir):
  codec = vae_codec.load_vae(tiny_dir)
  assert (codec.latent_channels, codec.spatial_stride, codec.temporal_stride) == (4, 4, 4)
  with pytest.raises(ValueError, match="frames=6"):
    codec.latent_shape(6, 16, 16)
  with pytest.raises(ValueError, match="width=18"):
    codec.check_video_shape(5, 16, 18)
  video = np.random.default_rng(0).integers(0, 256, (2, 5, 16, 24, 3), dtype=np.uint8)

  @jax.jit
  def round_trip(codec, video):
    latents = codec.encode(video)
    return latents, codec.decode(latents)

  latents, decoded = round_trip(codec, video)
  assert latents.shape == (2, 2, 4, 6, 4) and latents.dtype == jnp.float32
  assert decoded.shape == video.shape and decoded.dtype == jnp.float32
  assert float(jnp.abs(decoded).max()) <= 1.0
  # The weights are the codec's pytree leaves, i.e. jit inputs rather than program constants.
  assert len(jax.tree.leaves(codec)) == len(jax.tree.leaves(codec.params))
  args = round_trip.lower(codec, video).args_info
  assert len(jax.tree.leaves(args)) == len(jax.tree.leaves(codec.params)) + 1
  assert codec.to_uint8(decoded).dtype == np.uint8


def _config(name, weights, **codec):
  fields = dict(name=name, spatial_stride=4, temporal_stride=4, latent_channels=4,
                weights=weights)
  fields.update(codec)
  return ml_collections.ConfigDict({"codec": fields})


def test_make_codec_wan_names(tiny_dir):
  codec = codec_lib.make_codec(_config("wan2.1_vae", tiny_dir))
  assert isinstance(codec, vae_codec.WanVAECodec) and codec.latent_channels == 4
  with pytest.raises(ValueError, match="config.codec.weights=''"):
    codec_lib.make_codec(_config("wan2.1_vae", ""))
  with pytest.raises(ValueError, match="config.codec.weights='/nonexistent'"):
    codec_lib.make_codec(_config("wan2.2_vae", "/nonexistent"))
  with pytest.raises(CheckpointError, match="config.codec.name='wan2.2_vae' but the checkpoint "
                     "has 'wan2.1_vae'"):
    codec_lib.make_codec(_config("wan2.2_vae", tiny_dir))
  with pytest.raises(CheckpointError, match="config.codec.latent_channels=16"):
    codec_lib.make_codec(_config("wan2.1_vae", tiny_dir, latent_channels=16))
  with pytest.raises(CheckpointError, match="config.codec.spatial_stride=8"):
    codec_lib.make_codec(_config("wan2.1_vae", tiny_dir, spatial_stride=8))


def test_tile_blend_is_exact():
  """For a local function (here 4x nearest upsampling) tiles + linear blend == untiled."""
  assert vae_codec.tile_starts(12, 5, 2) == [0, 3, 6, 7]
  assert vae_codec.tile_starts(8, 8, 2) == [0]
  x = np.random.default_rng(0).standard_normal((1, 2, 8, 12, 4)).astype(np.float32)
  up = lambda z: jnp.repeat(jnp.repeat(2.0 * z, 4, axis=2), 4, axis=3)
  for tile, overlap in ((5, 2), (6, 0), (4, 3), (12, 1)):
    np.testing.assert_allclose(vae_codec.spatial_tiled(up, x, tile, overlap, 1, 4), up(x),
                               atol=1e-6)
  down = lambda z: z[:, :, ::4, ::4]
  np.testing.assert_allclose(vae_codec.spatial_tiled(down, up(x), 5, 2, 4, 1), 2.0 * x,
                             atol=1e-6)


def test_tiled_decode_close_to_untiled(tiny_dir):
  codec = vae_codec.load_vae(tiny_dir)
  latents = jax.random.normal(jax.random.key(0), (1, 2, 8, 12, 4))
  full = np.asarray(codec.decode(latents))
  tiled = np.asarray(dataclasses.replace(codec, tiling=(8, 4)).decode(latents))
  diff = np.abs(tiled - full)
  assert np.abs(full).mean() > 0.2
  assert diff.mean() < TILED_DECODE_MEAN and diff.max() < TILED_DECODE_MAX, (diff.mean(),
                                                                             diff.max())


def test_sharded_equals_unsharded(tiny_dir):
  codec = vae_codec.load_vae(tiny_dir)
  devices = np.array(jax.devices()[:8]).reshape(2, 4)
  mesh = Mesh(devices, ("data", "fsdp"))
  video = np.random.default_rng(1).integers(0, 256, (8, 5, 16, 16, 3), dtype=np.uint8)
  latents = codec.encode(video)
  sharded = codec.encode(video, mesh=mesh)
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_allclose(sharded, latents, atol=SHARD_ATOL)
  decoded = codec.decode(latents, mesh=mesh)
  assert len(decoded.sharding.device_set) == 8
  np.testing.assert_allclose(decoded, codec.decode(latents), atol=SHARD_ATOL)
