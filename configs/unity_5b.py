"""unity_5b: Wan2.2-TI2V-5B geometry: dim 3072, 30 layers, 24 heads, ffn 14336,
48-channel Wan2.2 VAE latents (4x16x16). The paper's setting on the public 5B backbone.

Needs precomputed umT5 caption embeddings and Wan VAE latents in the OpenUni records and a
TPU pod (docs/launching.md):
  unity-train --config configs/unity_5b.py --workdir /shared/runs/unity_5b
Smoke (same switches, pixel codec and byte-token text, CPU, < 2 minutes):
  unity-train --config configs/unity_5b.py:smoke --workdir /tmp/unity_5b_smoke
Mini (the real layer types: Wan2.2 VAE, precomputed umT5 text, chunked attention, remat; small
widths, random weights; the whole 5B recipe of docs/launching.md on a CPU):
  configs/unity_5b.py:mini
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  return config_lib.preset_config("unity_5b", arg)
