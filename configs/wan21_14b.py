"""wan21_14b: Wan2.1-14B geometry (dim 5120, 40 layers, 40 heads, ffn 13824, 16-channel VAE 4x8x8).

Use: a large pod run. Needs precomputed umT5 caption embeddings and Wan VAE latents in the OpenUni
records, and a TPU pod (see docs/launching.md). Geometry checks and parameter counts:
  python benchmarks/model_flops.py
Smoke (same switches, tiny shapes, CPU): unity-train --config configs/wan21_14b.py:smoke --workdir W
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config_lib.preset(config, dim=5120, num_layers=40, num_heads=40, ffn_dim=13824,
                    codec="wan2.1_vae")
  config.objective.shift = 5.0  # Wan TI2V's timestep shift.
  config.stages = config_lib.paper_stages(16_000, 40_000)
  if "smoke" in config_lib.parse_args(arg):
    config_lib.apply_smoke(config)
  return config
