"""unity_5b: Wan2.2-TI2V-5B geometry (dim 3072, 30 layers, 24 heads, ffn 14336, 48-channel VAE 4x16x16).

Use: the paper's setting on the public 5B backbone (release-like port). Needs precomputed umT5 caption embeddings and Wan VAE latents in the OpenUni
records, and a TPU pod (see docs/launching.md). Geometry checks and parameter counts:
  python benchmarks/model_flops.py
Smoke (same switches, tiny shapes, CPU): unity-train --config configs/unity_5b.py:smoke --workdir W
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config_lib.preset(config, dim=3072, num_layers=30, num_heads=24, ffn_dim=14336,
                    codec="wan2.2_vae")
  config.objective.shift = 5.0  # Wan TI2V's timestep shift.
  config.stages = config_lib.paper_stages(16_000, 40_000)
  if "smoke" in config_lib.parse_args(arg):
    config_lib.apply_smoke(config)
  return config
