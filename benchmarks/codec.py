"""Wan interop speed: the JAX Wan VAE against diffusers' AutoencoderKLWan, and the import of a
1.3B-geometry transformer checkpoint (time and peak host memory).

  python benchmarks/codec.py [--sections vae,import] [--generation wan2.1|wan2.2|both]
                             [--repeats 3] [--frames 9] [--height 64] [--width 96] [--base-dim 32]

Sections (main() runs each in turn):
  vae   one random diffusers AutoencoderKLWan (the released block structure, narrower:
        base_dim --base-dim, num_res_blocks 2, z_dim 16 / 48), saved with save_pretrained and
        imported into JAX, so both sides run the same weights; a batch-1 clip of
        --frames x --height x --width is encoded (posterior mean) and its latents decoded.
        JAX: jitted chunked encode/decode (compile excluded: one warm-up call); torch: float32,
        2 threads, no_grad. Prints clips/s (1 / median wall time over --repeats calls) for
        both and the ratio JAX / torch.
  import  benchmarks/wan_import.py: a random bf16 checkpoint of the Wan2.1-T2V-1.3B geometry
        written in the diffusers layout (2.8 GB in /tmp, removed afterwards), imported with
        wan.load_transformer in a fresh process; prints import seconds and peak RSS beside
        the fp32 model size.
torch and diffusers come from the optional `parity` extra; without them the JAX numbers are
printed alone with a message saying so.
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unity_jax.wan import vae as vae_lib  # noqa: E402
from unity_jax.wan import vae_weights  # noqa: E402

GEOMETRIES = {
    "wan2.1": dict(z_dim=16, dim_mult=(1, 2, 4, 4), is_residual=False, patch_size=1),
    "wan2.2": dict(z_dim=48, dim_mult=(1, 2, 4, 4), is_residual=True, patch_size=2),
}


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _vae_config(generation: str, base_dim: int) -> vae_lib.VAEConfig:
  g = GEOMETRIES[generation]
  channels = 3 * g["patch_size"] ** 2
  return vae_lib.VAEConfig(
      base_dim=base_dim, decoder_base_dim=base_dim * (3 if g["is_residual"] else 2) // 2,
      z_dim=g["z_dim"], dim_mult=g["dim_mult"], num_res_blocks=2,
      temperal_downsample=(False, True, True), is_residual=g["is_residual"],
      in_channels=channels, out_channels=channels, patch_size=g["patch_size"],
      latents_mean=(0.0,) * g["z_dim"], latents_std=(1.0,) * g["z_dim"])


def _torch_model(cfg: vae_lib.VAEConfig):
  """A random diffusers model of `cfg`, or None (with a message) without torch/diffusers."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import diffusers  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    print(f"  diffusers/torch not installed ({error}); install the `parity` extra "
          "(pip install -e .[parity]) for the diffusers numbers. JAX only.")
    return None, None
  torch.manual_seed(0)
  torch.set_num_threads(2)
  model = diffusers.AutoencoderKLWan(
      base_dim=cfg.base_dim, decoder_base_dim=cfg.decoder_base_dim, z_dim=cfg.z_dim,
      dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
      temperal_downsample=list(cfg.temperal_downsample), is_residual=cfg.is_residual,
      in_channels=cfg.in_channels, out_channels=cfg.out_channels,
      patch_size=cfg.patch_size if cfg.patch_size > 1 else None,
      scale_factor_spatial=cfg.spatial_stride, latents_mean=list(cfg.latents_mean),
      latents_std=list(cfg.latents_std)).eval()
  return torch, model


def vae_section(args) -> None:
  """JAX vs diffusers encode and decode clips/s for each requested generation."""
  generations = ["wan2.1", "wan2.2"] if args.generation == "both" else [args.generation]
  for generation in generations:
    cfg = _vae_config(generation, args.base_dim)
    print(f"{generation}: base_dim {cfg.base_dim}, decoder_base_dim {cfg.decoder_base_dim}, "
          f"z_dim {cfg.z_dim}, clip 1 x {args.frames} x {args.height} x {args.width}, "
          f"stride {cfg.temporal_stride}x{cfg.spatial_stride}x{cfg.spatial_stride}")
    torch, model = _torch_model(cfg)
    with tempfile.TemporaryDirectory() as directory:
      if model is not None:
        model.save_pretrained(directory)
      else:
        vae_weights.save_vae(directory, cfg, vae_lib.init_params(cfg, 0))
      cfg, params = vae_weights.load_params(directory)
    params = jax.device_put(params)
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (1, args.frames, args.height, args.width, 3)).astype(np.float32)
    encode = jax.jit(vae_lib.encode_mean, static_argnums=1)
    decode = jax.jit(vae_lib.decode_latents, static_argnums=1)
    start = time.perf_counter()
    latents = encode(params, cfg, video).block_until_ready()
    decode(params, cfg, latents).block_until_ready()
    compile_s = time.perf_counter() - start
    rates = {"jax": {
        "encode": 1 / _median_seconds(
            lambda: encode(params, cfg, video).block_until_ready(), args.repeats),
        "decode": 1 / _median_seconds(
            lambda: decode(params, cfg, latents).block_until_ready(), args.repeats)}}
    print(f"  jax: first encode+decode (compile and run) {compile_s:.1f} s")
    if model is not None:
      x = torch.from_numpy(video.transpose(0, 4, 1, 2, 3).copy())
      z = torch.from_numpy(np.asarray(latents).transpose(0, 4, 1, 2, 3).copy())
      with torch.no_grad():
        model.decode(model.encode(x).latent_dist.mean)                       # warm-up
        rates["diffusers"] = {
            "encode": 1 / _median_seconds(lambda: model.encode(x), args.repeats),
            "decode": 1 / _median_seconds(lambda: model.decode(z), args.repeats)}
    for op in ("encode", "decode"):
      line = f"  {op}: jax {rates['jax'][op]:.3f} clips/s"
      if "diffusers" in rates:
        line += (f", diffusers (torch, 2 threads) {rates['diffusers'][op]:.3f} clips/s, "
                 f"ratio jax/diffusers {rates['jax'][op] / rates['diffusers'][op]:.2f}")
      print(line)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sections", default="vae,import",
                      help="comma-separated sections to run: vae, import")
  parser.add_argument("--generation", default="both", choices=("wan2.1", "wan2.2", "both"))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--frames", type=int, default=9)
  parser.add_argument("--height", type=int, default=64)
  parser.add_argument("--width", type=int, default=96)
  parser.add_argument("--base-dim", type=int, default=32)
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  sections = {s.strip() for s in args.sections.split(",") if s.strip()}
  unknown = sections - {"vae", "import"}
  if unknown:
    parser.error(f"--sections: unknown {sorted(unknown)}; expected vae and/or import")
  if "vae" in sections:
    vae_section(args)
  if "import" in sections:
    import wan_import  # pylint: disable=g-import-not-at-top  (benchmarks/wan_import.py)
    print("== import: Wan2.1-T2V-1.3B geometry, random bf16 weights ==")
    wan_import.main([])


if __name__ == "__main__":
  main()
