"""unity_10b: a PLAUSIBLE 10B geometry (dim 4096, 40 layers, 32 heads, ffn 14336). The
paper's 10B backbone is internal: this preset is our guess at its shape, labelled as such.

Needs precomputed umT5 caption embeddings and Wan VAE latents in the OpenUni records and a
TPU pod (docs/launching.md):
  unity-train --config configs/unity_10b.py --workdir /shared/runs/unity_10b
Smoke (same switches, tiny shapes, CPU, < 2 minutes):
  unity-train --config configs/unity_10b.py:smoke --workdir /tmp/unity_10b_smoke
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  return config_lib.preset_config("unity_10b", arg)
