"""unity_10b: A PLAUSIBLE 10B geometry (dim 4096, 40 layers, 32 heads, ffn 14336): the paper's 10B backbone is internal, so this preset is our guess at its shape, labelled as such.

Use: the paper-scale run. Needs precomputed umT5 caption embeddings and Wan VAE latents in the OpenUni
records, and a TPU pod (see docs/launching.md). Geometry checks and parameter counts:
  python benchmarks/model_flops.py
Smoke (same switches, tiny shapes, CPU): unity-train --config configs/unity_10b.py:smoke --workdir W
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config_lib.preset(config, dim=4096, num_layers=40, num_heads=32, ffn_dim=14336,
                    codec="wan2.2_vae")
  config.objective.shift = 5.0  # Wan TI2V's timestep shift.
  config.stages = config_lib.paper_stages(16_000, 40_000)
  if "smoke" in config_lib.parse_args(arg):
    config_lib.apply_smoke(config)
  return config
