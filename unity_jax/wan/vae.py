"""The Wan video VAE (Wan2.1 and Wan2.2 generations) as pure functions over a params pytree.

Layout. Videos and activations are channel-last, [B, T, H, W, C]. Parameters are a nested dict
whose path is the diffusers `AutoencoderKLWan` module path (`encoder/down_blocks/0/conv1`);
leaves are `kernel` (JAX conv layout: 3D [kt, kh, kw, in, out], 2D [kh, kw, in, out]), `bias`
[out] and `gamma` [C] (RMS-norm scale). `VAEConfig` is the static geometry (hashable, so it can
be a static jit argument); `param_shapes(config)` is the one place the architecture is spelled
out, shared by `init_params` and the importer's coverage check (vae_weights.py).

Causality and the temporal cache. Every 3-frame convolution is causal: output frame t sees input
frames t-2..t, with zeros before frame 0. The reference (diffusers) runs the encoder on the
first frame alone and then on groups of 4 frames, and the decoder one latent frame at a time,
keeping the last input frames of every causal conv in a Python list indexed by a global counter.
Here each block takes its cache as a pytree argument and returns the updated one, so a chunk is
a pure function (x, cache) -> (y, cache) and the chunks after the first run under `lax.scan`
(one compiled body whatever the clip length). A conv's cache is always the last CACHE_T = 2
frames of its (padded) input, zeros before the clip starts: that equals zero padding on the
first chunk and reproduces the reference exactly, including its 1-frame chunks.

The first chunk is special in two places, both reproduced by `mode`:
  * `downsample3d` (encoder): the first frame passes its stride-2 time conv untouched; later
    chunks convolve (last frame of the previous chunk, chunk) with stride 2;
  * `upsample3d` (decoder): the first latent frame skips the time conv ("Rep" in the reference:
    that frame is not doubled) and the conv's cache starts as zeros; Wan2.2's DupUp3D shortcut
    drops its first factor_t - 1 frames to match.
mode "full" runs a whole clip at once with the same semantics (frame 0 handled as the first
chunk, the rest convolved causally in one go): the unchunked path, used to test the chunking.

Wan2.2 differences: input patchified (2x2 pixels -> 12 channels, the reference's channel order),
residual down/up blocks whose shortcut is a parameter-free space/time-to-channel average
(AvgDown3D) or channel-to-space/time duplication (DupUp3D), and a wider decoder
(decoder_base_dim).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CACHE_T = 2            # frames of causal context kept per 3-frame conv (kernel 3, causal)
ENCODE_CHUNK = 4       # frames per encoder chunk after the first frame (the reference's grouping)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Static geometry of a Wan VAE (the fields of the diffusers config.json that matter)."""
  base_dim: int = 96
  decoder_base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temperal_downsample: tuple = (False, True, True)
  is_residual: bool = False
  in_channels: int = 3
  out_channels: int = 3
  patch_size: int = 1
  latents_mean: tuple = ()
  latents_std: tuple = ()

  @property
  def generation(self) -> str:
    return "wan2.2_vae" if self.is_residual else "wan2.1_vae"

  @property
  def spatial_stride(self) -> int:
    return self.patch_size * 2 ** (len(self.dim_mult) - 1)

  @property
  def temporal_stride(self) -> int:
    return 2 ** sum(bool(t) for t in self.temperal_downsample)


# ----------------------------------------------------------------------------------- layers ---

def _conv(p, x, padding, stride=(1, 1, 1)):
  """3D conv of [B, T, H, W, C] with kernel [kt, kh, kw, in, out]; time already padded."""
  y = lax.conv_general_dilated(x, p["kernel"], stride, padding,
                               dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  return y + p["bias"]


def _causal_conv(p, x, cache):
  """Causal 3-frame conv (spatial 'same'): ([B, T, H, W, C], cache [B, 2, H, W, C] or None)
  -> ([B, T, H, W, out], new cache = last 2 frames of the cache-extended input)."""
  if cache is None:
    cache = jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], x.dtype)
  xx = jnp.concatenate([cache, x], axis=1)
  ph, pw = p["kernel"].shape[1] // 2, p["kernel"].shape[2] // 2
  return _conv(p, xx, [(0, 0), (ph, ph), (pw, pw)]), xx[:, -CACHE_T:]


def _pointwise(p, x):
  """1x1(x1) conv: kernel [..., in, out] applied to the channel axis."""
  k = p["kernel"]
  return jnp.einsum("...c,cd->...d", x, k.reshape(k.shape[-2:])) + p["bias"]


def _conv2d(p, x, padding, stride=1):
  """Per-frame 2D conv of [B, T, H, W, C] with kernel [kh, kw, in, out]."""
  b, t = x.shape[:2]
  y = lax.conv_general_dilated(x.reshape((b * t,) + x.shape[2:]), p["kernel"], (stride, stride),
                               padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return (y + p["bias"]).reshape((b, t) + y.shape[1:])


def _rms_norm(p, x):
  """F.normalize over channels (eps 1e-12) * sqrt(C) * gamma, as WanRMS_norm."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, 1e-12) * math.sqrt(x.shape[-1]) * p["gamma"]


def _residual_block(p, x, cache):
  c = cache or {}
  h = _pointwise(p["conv_shortcut"], x) if "conv_shortcut" in p else x
  y, c1 = _causal_conv(p["conv1"], jax.nn.silu(_rms_norm(p["norm1"], x)), c.get("conv1"))
  y, c2 = _causal_conv(p["conv2"], jax.nn.silu(_rms_norm(p["norm2"], y)), c.get("conv2"))
  return y + h, {"conv1": c1, "conv2": c2}


def _attention_block(p, x):
  """Single-head self-attention over the pixels of each frame (no temporal mixing)."""
  b, t, h, w, c = x.shape
  y = _rms_norm(p["norm"], x)
  q, k, v = jnp.split(_pointwise(p["to_qkv"], y).reshape(b * t, h * w, 3 * c), 3, axis=-1)
  logits = jnp.einsum("nqc,nkc->nqk", q, k) / math.sqrt(c)
  y = jnp.einsum("nqk,nkc->nqc", jax.nn.softmax(logits, axis=-1), v)
  return x + _pointwise(p["proj"], y.reshape(b, t, h, w, c))


def _mid_block(p, x, cache):
  c = cache or {}
  x, c0 = _residual_block(p["resnets"]["0"], x, c.get("0"))
  x = _attention_block(p["attentions"]["0"], x)
  x, c1 = _residual_block(p["resnets"]["1"], x, c.get("1"))
  return x, {"0": c0, "1": c1}


def _interleave_time(y):
  """[B, T, H, W, 2C] -> [B, 2T, H, W, C]: channel half 0 is frame 2t, half 1 frame 2t+1."""
  b, t, h, w, c2 = y.shape
  y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
  return y.reshape(b, 2 * t, h, w, c2 // 2)


def _resample(p, x, cache, mode, kind):
  """WanResample: kind in up2d/up3d/down2d/down3d; returns (x, cache)."""
  new = {}
  if kind == "up3d":
    tc = p["time_conv"]
    if mode == "first":      # the reference's "Rep": frame 0 is not doubled, cache stays zeros
      new["time_conv"] = jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], x.dtype)
    elif mode == "next":
      y, new["time_conv"] = _causal_conv(tc, x, cache["time_conv"])
      x = _interleave_time(y)
    elif x.shape[1] > 1:     # full: frame 0 alone, the rest doubled by one causal conv
      y, _ = _causal_conv(tc, x[:, 1:], None)
      x = jnp.concatenate([x[:, :1], _interleave_time(y)], axis=1)
  if kind.startswith("up"):
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)        # nearest-exact, factor 2
    x = _conv2d(p["resample"]["1"], x, [(1, 1), (1, 1)])
  else:                                                        # ZeroPad2d((0, 1, 0, 1))
    x = _conv2d(p["resample"]["1"], x, [(0, 1), (0, 1)], stride=2)
  if kind == "down3d":
    tc = p["time_conv"]
    if mode == "first":      # frame 0 passes untouched; remember it for the next chunk
      new["time_conv"] = x[:, -1:]
    elif mode == "next":
      xx = jnp.concatenate([cache["time_conv"], x], axis=1)
      new["time_conv"] = x[:, -1:]
      x = _conv(tc, xx, [(0, 0)] * 3, stride=(2, 1, 1))
    elif x.shape[1] > 1:
      x = jnp.concatenate([x[:, :1], _conv(tc, x, [(0, 0)] * 3, stride=(2, 1, 1))], axis=1)
  return x, new


def _avg_down(x, out_dim, ft, fs):
  """AvgDown3D: [B, T, H, W, C] -> [B, ceil(T/ft), H/fs, W/fs, out_dim]; time padded in front."""
  pad_t = (ft - x.shape[1] % ft) % ft
  x = jnp.pad(x, [(0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)])
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
  x = x.reshape(b, t // ft, h // fs, w // fs, out_dim, c * ft * fs * fs // out_dim)
  return x.mean(axis=-1)


def _dup_up(x, out_dim, ft, fs, first):
  """DupUp3D: [B, T, H, W, C] -> [B, T*ft (- ft+1 on the first chunk), H*fs, W*fs, out_dim]."""
  b, t, h, w, c = x.shape
  x = jnp.repeat(x, out_dim * ft * fs * fs // c, axis=-1)
  x = x.reshape(b, t, h, w, out_dim, ft, fs, fs).transpose(0, 1, 5, 2, 6, 3, 7, 4)
  x = x.reshape(b, t * ft, h * fs, w * fs, out_dim)
  return x[:, ft - 1:] if first else x


# ----------------------------------------------------------------------------- architecture ---

def encoder_layout(cfg: VAEConfig):
  """[(name, kind, info)] of encoder.down_blocks in order; kinds: res, down2d, down3d, resdown."""
  dims = [cfg.base_dim * u for u in (1,) + tuple(cfg.dim_mult)]
  last = len(cfg.dim_mult) - 1
  blocks = []
  for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
    temporal = bool(cfg.temperal_downsample[i]) if i != last else False
    if cfg.is_residual:
      blocks.append((str(i), "resdown", dict(in_dim=in_dim, out_dim=out_dim, temporal=temporal,
                                             down=i != last)))
      continue
    for _ in range(cfg.num_res_blocks):
      blocks.append((str(len(blocks)), "res", dict(in_dim=in_dim, out_dim=out_dim)))
      in_dim = out_dim
    if i != last:
      blocks.append((str(len(blocks)), "down3d" if temporal else "down2d", dict(dim=out_dim)))
  return blocks, dims[-1]


def decoder_layout(cfg: VAEConfig):
  """[(name, info)] of decoder.up_blocks, and the mid-block width."""
  dims = [cfg.decoder_base_dim * u for u in (cfg.dim_mult[-1],) + tuple(cfg.dim_mult[::-1])]
  upsample = tuple(cfg.temperal_downsample[::-1])
  last = len(cfg.dim_mult) - 1
  blocks = []
  for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
    if i > 0 and not cfg.is_residual:
      in_dim //= 2                     # Wan2.1's upsamplers halve the channels
    up = i != last
    blocks.append((str(i), dict(in_dim=in_dim, out_dim=out_dim, up=up,
                                temporal=bool(upsample[i]) if up else False)))
  return blocks, dims[0]


def _conv_shapes(kt, kh, kw, cin, cout):
  return {"kernel": (kt, kh, kw, cin, cout), "bias": (cout,)}


def _res_shapes(cin, cout):
  shapes = {"norm1": {"gamma": (cin,)}, "conv1": _conv_shapes(3, 3, 3, cin, cout),
            "norm2": {"gamma": (cout,)}, "conv2": _conv_shapes(3, 3, 3, cout, cout)}
  if cin != cout:
    shapes["conv_shortcut"] = _conv_shapes(1, 1, 1, cin, cout)
  return shapes


def _mid_shapes(dim):
  return {"resnets": {"0": _res_shapes(dim, dim), "1": _res_shapes(dim, dim)},
          "attentions": {"0": {"norm": {"gamma": (dim,)},
                               "to_qkv": {"kernel": (1, 1, dim, 3 * dim), "bias": (3 * dim,)},
                               "proj": {"kernel": (1, 1, dim, dim), "bias": (dim,)}}}}


def _resample_shapes(kind, dim, out_dim=None):
  out_dim = dim if kind.startswith("down") else out_dim
  shapes = {"resample": {"1": {"kernel": (3, 3, dim, out_dim), "bias": (out_dim,)}}}
  if kind == "down3d":
    shapes["time_conv"] = _conv_shapes(3, 1, 1, dim, dim)
  if kind == "up3d":
    shapes["time_conv"] = _conv_shapes(3, 1, 1, dim, 2 * dim)
  return shapes


def param_shapes(cfg: VAEConfig) -> dict:
  """The params pytree of `cfg` with shape tuples as leaves (JAX layouts)."""
  blocks, enc_dim = encoder_layout(cfg)
  down = {}
  for name, kind, info in blocks:
    if kind == "res":
      down[name] = _res_shapes(info["in_dim"], info["out_dim"])
    elif kind == "resdown":
      cin, cout = info["in_dim"], info["out_dim"]
      down[name] = {"resnets": {str(j): _res_shapes(cin if j == 0 else cout, cout)
                                for j in range(cfg.num_res_blocks)}}
      if info["down"]:
        down[name]["downsampler"] = _resample_shapes(
            "down3d" if info["temporal"] else "down2d", cout)
    else:
      down[name] = _resample_shapes(kind, info["dim"])
  encoder = {"conv_in": _conv_shapes(3, 3, 3, cfg.in_channels, cfg.base_dim),
             "down_blocks": down, "mid_block": _mid_shapes(enc_dim),
             "norm_out": {"gamma": (enc_dim,)},
             "conv_out": _conv_shapes(3, 3, 3, enc_dim, 2 * cfg.z_dim)}
  blocks, dec_dim = decoder_layout(cfg)
  up = {}
  for name, info in blocks:
    cin, cout = info["in_dim"], info["out_dim"]
    up[name] = {"resnets": {str(j): _res_shapes(cin if j == 0 else cout, cout)
                            for j in range(cfg.num_res_blocks + 1)}}
    if info["up"]:
      kind = "up3d" if info["temporal"] else "up2d"
      if cfg.is_residual:
        up[name]["upsampler"] = _resample_shapes(kind, cout, cout)
      else:
        up[name]["upsamplers"] = {"0": _resample_shapes(kind, cout, cout // 2)}
  decoder = {"conv_in": _conv_shapes(3, 3, 3, cfg.z_dim, dec_dim),
             "mid_block": _mid_shapes(dec_dim), "up_blocks": up,
             "norm_out": {"gamma": (cout,)},
             "conv_out": _conv_shapes(3, 3, 3, cout, cfg.out_channels)}
  return {"encoder": encoder, "decoder": decoder,
          "quant_conv": _conv_shapes(1, 1, 1, 2 * cfg.z_dim, 2 * cfg.z_dim),
          "post_quant_conv": _conv_shapes(1, 1, 1, cfg.z_dim, cfg.z_dim)}


def is_shape_leaf(x):
  """Leaves of `param_shapes` trees are shape tuples (tree utilities would descend into them)."""
  return isinstance(x, tuple)


def init_params(cfg: VAEConfig, key: int = 0, scale: float = 1.0) -> dict:
  """Random float32 params for tests and benchmarks: fan-in scaled normal kernels, biases
  N(0, 0.1), norm scales 1 + N(0, 0.1). numpy, so no per-shape XLA compiles."""
  rng = np.random.default_rng(key)

  def draw(path, shape):
    if path[-1].key == "kernel":
      return (scale * rng.standard_normal(shape) / math.sqrt(np.prod(shape[:-1]))).astype(
          np.float32)
    noise = (0.1 * scale * rng.standard_normal(shape)).astype(np.float32)
    return 1.0 + noise if path[-1].key == "gamma" else noise

  return jax.tree_util.tree_map_with_path(draw, param_shapes(cfg), is_leaf=is_shape_leaf)


# ------------------------------------------------------------------------ encoder / decoder ---

def _sub(cache, *keys):
  for k in keys:
    if cache is None:
      return None
    cache = cache.get(k)
  return cache


def encoder(params, cfg: VAEConfig, x, cache, mode):
  """Encoder3d on one chunk [B, t, H, W, in_channels] -> ([B, t', H', W', 2 z_dim], cache)."""
  new = {"down_blocks": {}}
  x, new["conv_in"] = _causal_conv(params["conv_in"], x, _sub(cache, "conv_in"))
  blocks, _ = encoder_layout(cfg)
  for name, kind, info in blocks:
    p, c = params["down_blocks"][name], _sub(cache, "down_blocks", name)
    if kind == "res":
      x, new["down_blocks"][name] = _residual_block(p, x, c)
    elif kind == "resdown":
      shortcut = _avg_down(x, info["out_dim"], 2 if info["temporal"] else 1,
                           2 if info["down"] else 1)
      nb = {"resnets": {}}
      for j in sorted(p["resnets"], key=int):
        x, nb["resnets"][j] = _residual_block(p["resnets"][j], x, _sub(c, "resnets", j))
      if info["down"]:
        x, nb["downsampler"] = _resample(p["downsampler"], x, _sub(c, "downsampler"), mode,
                                         "down3d" if info["temporal"] else "down2d")
      x = x + shortcut
      new["down_blocks"][name] = nb
    else:
      x, new["down_blocks"][name] = _resample(p, x, c, mode, kind)
  x, new["mid_block"] = _mid_block(params["mid_block"], x, _sub(cache, "mid_block"))
  x = jax.nn.silu(_rms_norm(params["norm_out"], x))
  x, new["conv_out"] = _causal_conv(params["conv_out"], x, _sub(cache, "conv_out"))
  return x, new


def decoder(params, cfg: VAEConfig, x, cache, mode):
  """Decoder3d on one chunk [B, f, H', W', z_dim] -> ([B, t, H, W, out_channels], cache)."""
  new = {"up_blocks": {}}
  x, new["conv_in"] = _causal_conv(params["conv_in"], x, _sub(cache, "conv_in"))
  x, new["mid_block"] = _mid_block(params["mid_block"], x, _sub(cache, "mid_block"))
  blocks, _ = decoder_layout(cfg)
  for name, info in blocks:
    p, c = params["up_blocks"][name], _sub(cache, "up_blocks", name)
    x_in, nb = x, {"resnets": {}}
    for j in sorted(p["resnets"], key=int):
      x, nb["resnets"][j] = _residual_block(p["resnets"][j], x, _sub(c, "resnets", j))
    if info["up"]:
      kind = "up3d" if info["temporal"] else "up2d"
      key = "upsampler" if cfg.is_residual else "upsamplers"
      rp = p[key] if cfg.is_residual else p[key]["0"]
      x, rc = _resample(rp, x, _sub(c, key) if cfg.is_residual else _sub(c, key, "0"), mode, kind)
      nb[key] = rc if cfg.is_residual else {"0": rc}
      if cfg.is_residual:
        x = x + _dup_up(x_in, info["out_dim"], 2 if info["temporal"] else 1, 2,
                        first=mode != "next")
    new["up_blocks"][name] = nb
  x = jax.nn.silu(_rms_norm(params["norm_out"], x))
  x, new["conv_out"] = _causal_conv(params["conv_out"], x, _sub(cache, "conv_out"))
  return x, new


# ------------------------------------------------------------------------- encode / decode ---

def patchify(x, p: int):
  """[B, T, H, W, C] -> [B, T, H/p, W/p, C p p], channel order (c, pw, ph) as the reference."""
  if p == 1:
    return x
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
  return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x, p: int):
  """Inverse of `patchify`."""
  if p == 1:
    return x
  b, t, h, w, cpp = x.shape
  x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
  return x.reshape(b, t, h * p, w * p, cpp // (p * p))


def _scan_chunks(fn, cache, chunks):
  """Runs fn(chunk, cache) -> (y, cache) over chunks [B, n, c, ...] (n >= 0) under lax.scan;
  returns the outputs concatenated along time, [B, n * c', ...] (None when n == 0)."""
  if chunks.shape[1] == 0:
    return None
  def body(carry, xc):
    y, carry = fn(xc, carry)
    return carry, y
  _, ys = lax.scan(body, cache, jnp.moveaxis(chunks, 1, 0))
  ys = jnp.moveaxis(ys, 0, 1)
  return ys.reshape((ys.shape[0], ys.shape[1] * ys.shape[2]) + ys.shape[3:])


def encode_mean(params, cfg: VAEConfig, video, chunked: bool = True):
  """Posterior mean (unnormalised) of pixels in [-1, 1].

  video: float [B, T, H, W, 3] with T = 1 + 4k -> mu float [B, 1 + k', H/s, W/s, z_dim].
  chunked: the reference's causal chunking (frame 0, then groups of 4 under lax.scan);
  False runs the whole clip through the encoder at once (same result up to rounding).
  """
  x = patchify(video.astype(jnp.float32), cfg.patch_size)
  enc = params["encoder"]
  if chunked:
    out, cache = encoder(enc, cfg, x[:, :1], None, "first")
    b, t = x.shape[:2]
    rest = x[:, 1:].reshape((b, (t - 1) // ENCODE_CHUNK, ENCODE_CHUNK) + x.shape[2:])
    more = _scan_chunks(lambda xc, c: encoder(enc, cfg, xc, c, "next"), cache, rest)
    if more is not None:
      out = jnp.concatenate([out, more], axis=1)
  else:
    out, _ = encoder(enc, cfg, x, None, "full")
  return _pointwise(params["quant_conv"], out)[..., :cfg.z_dim]


def decode_latents(params, cfg: VAEConfig, z, chunked: bool = True, clip: bool = True):
  """Unnormalised latents [B, F, H', W', z_dim] -> pixels [B, 1 + 4(F-1), H, W, 3] in [-1, 1]
  (clipped as the reference unless clip=False). chunked: one latent frame at a time under
  lax.scan; False decodes the whole clip at once."""
  x = _pointwise(params["post_quant_conv"], z.astype(jnp.float32))
  dec = params["decoder"]
  if chunked:
    out, cache = decoder(dec, cfg, x[:, :1], None, "first")
    rest = x[:, 1:, None]
    more = _scan_chunks(lambda xc, c: decoder(dec, cfg, xc, c, "next"), cache, rest)
    if more is not None:
      out = jnp.concatenate([out, more], axis=1)
  else:
    out, _ = decoder(dec, cfg, x, None, "full")
  out = unpatchify(out, cfg.patch_size)
  return jnp.clip(out, -1.0, 1.0) if clip else out


def normalize(cfg: VAEConfig, mu):
  """(mu - latents_mean) / latents_std per channel, the latents the DiT sees."""
  mean = jnp.asarray(cfg.latents_mean, jnp.float32)
  std = jnp.asarray(cfg.latents_std, jnp.float32)
  return (mu - mean) / std


def denormalize(cfg: VAEConfig, latents):
  """Inverse of `normalize`."""
  mean = jnp.asarray(cfg.latents_mean, jnp.float32)
  std = jnp.asarray(cfg.latents_std, jnp.float32)
  return latents * std + mean
