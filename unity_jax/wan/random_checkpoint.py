"""Small random Wan checkpoints in the diffusers layout, for smoke runs and tests.

  python -m unity_jax.wan.random_checkpoint --out /tmp/wan_random [--vae 2.1|2.2]

writes `vae/` (an `AutoencoderKLWan`) and `transformer/` (a `WanTransformer3DModel`) with
random weights via diffusers' own `save_pretrained`, so what unity_jax imports is exactly what
the reference library writes. Needs the `parity` extra (torch CPU + diffusers); nothing is
downloaded. The geometries are tiny (seconds on a CPU) but keep each generation's structure:
Wan2.1's 16-channel VAE with stride 4x8x8, Wan2.2's residual, patchified 48-channel VAE with
stride 4x16x16.
"""

import argparse
import os

# name -> AutoencoderKLWan keyword arguments (small widths, the real structure).
VAE_GEOMETRIES = {
    "2.1": dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                temperal_downsample=[False, True, True]),
    "2.2": dict(base_dim=16, decoder_base_dim=24, z_dim=48, dim_mult=[1, 2, 2, 2],
                num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True,
                in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16),
}


def _randomize(module, seed: int, scale: float = 0.2):
  """Replaces every parameter (including diffusers' zero-initialised ones, such as the
  modulation tables and output projections) with N(0, scale²) noise, norms' weights with
  1 + noise, so every path of the network carries signal."""
  import torch  # pylint: disable=g-import-not-at-top
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in module.named_parameters():
      noise = torch.randn(param.shape, generator=generator) * scale
      is_norm_weight = ("norm" in name or "gamma" in name) and name.endswith(
          ("weight", "gamma"))
      param.copy_(1.0 + noise if is_norm_weight else noise)


def write_vae(out_dir: str, generation: str = "2.1", seed: int = 0) -> str:
  """Writes a random `AutoencoderKLWan` of `generation` ("2.1" | "2.2") into out_dir."""
  from diffusers import AutoencoderKLWan  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  geometry = dict(VAE_GEOMETRIES[generation])
  z_dim = geometry["z_dim"]
  rng = torch.Generator().manual_seed(seed + 1)
  geometry.update(latents_mean=(torch.randn(z_dim, generator=rng) * 0.1).tolist(),
                  latents_std=(1.0 + torch.rand(z_dim, generator=rng)).tolist())
  vae = AutoencoderKLWan(**geometry)
  _randomize(vae, seed, scale=0.1)
  vae.save_pretrained(out_dir)
  return out_dir


def write_transformer(out_dir: str, *, in_channels: int, dim: int = 64, num_heads: int = 4,
                      num_layers: int = 2, ffn_dim: int = 128, text_dim: int = 32,
                      seed: int = 0) -> str:
  """Writes a random `WanTransformer3DModel` of the given geometry into out_dir."""
  from diffusers import WanTransformer3DModel  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = WanTransformer3DModel(
      patch_size=(1, 2, 2), num_attention_heads=num_heads, attention_head_dim=dim // num_heads,
      in_channels=in_channels, out_channels=in_channels, text_dim=text_dim, freq_dim=256,
      ffn_dim=ffn_dim, num_layers=num_layers)
  _randomize(model, seed, scale=0.05)
  model.save_pretrained(out_dir)
  return out_dir


def write_pair(out_dir: str, generation: str = "2.1", seed: int = 0, **transformer_kw):
  """(transformer dir, vae dir) under out_dir: a random VAE and a matching transformer."""
  vae_dir = write_vae(os.path.join(out_dir, "vae"), generation, seed)
  in_channels = VAE_GEOMETRIES[generation]["z_dim"]
  transformer_dir = write_transformer(os.path.join(out_dir, "transformer"),
                                      in_channels=in_channels, seed=seed, **transformer_kw)
  return transformer_dir, vae_dir


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="directory for vae/ and transformer/")
  parser.add_argument("--vae", choices=sorted(VAE_GEOMETRIES), default="2.1")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    transformer_dir, vae_dir = write_pair(args.out, args.vae, args.seed)
  except ImportError as e:
    raise SystemExit(f"random_checkpoint needs torch and diffusers (pip install -e "
                     f"'.[parity]'): {e}") from e
  print(f"wrote {transformer_dir} and {vae_dir}")


if __name__ == "__main__":
  main()
