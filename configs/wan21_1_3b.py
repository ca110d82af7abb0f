"""wan21_1_3b: Wan2.1-T2V-1.3B geometry (dim 1536, 30 layers, 12 heads, ffn 8960, 16-channel VAE 4x8x8).

Use: a mid-size run. Needs precomputed umT5 caption embeddings and Wan VAE latents in the OpenUni
records, and a TPU pod (see docs/launching.md). Geometry checks and parameter counts:
  python benchmarks/model_flops.py
Smoke (same switches, tiny shapes, CPU): unity-train --config configs/wan21_1_3b.py:smoke --workdir W
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config_lib.preset(config, dim=1536, num_layers=30, num_heads=12, ffn_dim=8960,
                    codec="wan2.1_vae")
  config.objective.shift = 5.0  # Wan TI2V's timestep shift.
  config.stages = config_lib.paper_stages(16_000, 40_000)
  if "smoke" in config_lib.parse_args(arg):
    config_lib.apply_smoke(config)
  return config
