"""small: the CPU benchmark size (d=256, 6 layers, 2,560 joint tokens per sample).

The geometry is the one benchmarks/peer.py gives diffusers' Wan transformer under PyTorch (d=256,
6 layers, 2,560 joint tokens per sample, batch 4), so step times compare directly:
  python benchmarks/train_step.py --configs small     # step time, MFU-proxy, memory
  python benchmarks/peer.py                           # unity_jax vs diffusers + torch, one run
"""

from unity_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.model.update(dim=256, num_layers=6, num_heads=4, ffn_dim=1024, text_dim=128,
                      text_layers=2, text_heads=4, dtype="float32",
                      # Flash-style attention in 1,280-token tiles (2 x 2 per sequence, loops
                      # unrolled): on 2 CPU cores faster than 512 (10.1-11.1 s per step before
                      # unrolling, vs 9.0-10.2), than one 2,560 tile (12.2 s) or dot-product
                      # attention; 640 is even with it once unrolled (9.1-9.7 vs 9.4 s).
                      attention="chunked", attention_chunk=1280)
  config.data.update(num_frames=17, height=64, width=64)
  config.train.batch_size = 4
  config.stages = config_lib.paper_stages(2000, 4000)
  if "smoke" in config_lib.parse_args(arg):
    config_lib.apply_smoke(config)
  return config
