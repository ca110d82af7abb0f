"""wan21_1_3b: Wan2.1-T2V-1.3B geometry: dim 1536, 30 layers, 12 heads, ffn 8960,
16-channel Wan2.1 VAE latents (4x8x8).

Needs precomputed umT5 caption embeddings and Wan VAE latents in the OpenUni records and a
TPU pod (docs/launching.md):
  unity-train --config configs/wan21_1_3b.py --workdir /shared/runs/wan21_1_3b
Smoke (same switches, tiny shapes, CPU, < 2 minutes):
  unity-train --config configs/wan21_1_3b.py:smoke --workdir /tmp/wan21_1_3b_smoke
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  return config_lib.preset_config("wan21_1_3b", arg)
