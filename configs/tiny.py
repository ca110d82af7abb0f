"""tiny: the CPU demo model (≈1.0M parameters) on 9-frame 32×32 synthetic clips.

Run (≈ minutes on a 2-core CPU; both curriculum stages, loss falls from ≈2 to well below 1):
  unity-train --config configs/tiny.py --workdir runs/tiny
Smoke (< 2 minutes, used by tests and CI):
  unity-train --config configs/tiny.py:smoke --workdir /tmp/tiny_smoke
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.model.update(dim=96, num_layers=4, num_heads=4, ffn_dim=384, text_dim=64,
                      text_layers=2, text_heads=4, dtype="float32")
  config.data.update(num_frames=9, height=32, width=32)
  config.train.batch_size = 8
  config.stages = config_lib.paper_stages(300, 600)
  if "smoke" in config_lib.parse_args(arg):
    config_lib.apply_smoke(config)
  return config
