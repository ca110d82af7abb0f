"""wan21_14b: Wan2.1-14B geometry: dim 5120, 40 layers, 40 heads, ffn 13824,
16-channel Wan2.1 VAE latents (4x8x8).

Needs precomputed umT5 caption embeddings and Wan VAE latents in the OpenUni records and a
TPU pod (docs/launching.md):
  unity-train --config configs/wan21_14b.py --workdir /shared/runs/wan21_14b
Smoke (same switches, tiny shapes, CPU, < 2 minutes):
  unity-train --config configs/wan21_14b.py:smoke --workdir /tmp/wan21_14b_smoke
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  return config_lib.preset_config("wan21_14b", arg)
