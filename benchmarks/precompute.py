"""`unity-data precompute` throughput and `read_clip` read rate at the tiny and small geometries.

  python benchmarks/precompute.py [--clips 8] [--configs tiny small] [--min-seconds 3]

Random-noise clips (fakes.fake_clip), the config's codec, the fake text encoder, float32. The
precompute rate is a second run into a fresh directory (jit already compiled); the read rate
is `read_clip` in one thread over the stored clips. Numbers go to docs/openuni_format.md s. 11.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

from unity_jax import config as config_lib  # noqa: E402  pylint: disable=wrong-import-position
from unity_jax import constants  # noqa: E402  pylint: disable=wrong-import-position
from unity_jax.data import fakes, precompute  # noqa: E402  pylint: disable=wrong-import-position
from unity_jax.data import precomputed, writer  # noqa: E402  pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(name: str, clips: int, min_seconds: float, root: str) -> dict:
  config = config_lib.load_config(os.path.join(REPO, "configs", f"{name}.py"))
  config.model.text_encoder, config.text.encoder = "precomputed", "fake"
  d = config.data
  writer.write_clips([fakes.fake_clip(seed=i, source=constants.SOURCES[i % 4],
                                      num_frames=d.num_frames, height=d.height, width=d.width,
                                      with_gt=False) for i in range(clips)],
                     os.path.join(root, "data"), "train")
  precompute.run(config, os.path.join(root, "data"), os.path.join(root, "warm"))
  start = time.perf_counter()
  precompute.run(config, os.path.join(root, "data"), os.path.join(root, "out"))
  encode_seconds = time.perf_counter() - start
  store = precomputed.open_precomputed(os.path.join(root, "out"), "train")
  reads, start = 0, time.perf_counter()
  while time.perf_counter() - start < min_seconds:
    precomputed.read_clip(store, reads % clips)
    reads += 1
  read_seconds = (time.perf_counter() - start) / reads
  stored = sum(os.path.getsize(os.path.join(base, f))
               for base, _, files in os.walk(os.path.join(root, "out")) for f in files)
  return {"clip": [d.num_frames, d.height, d.width], "batch": config.train.batch_size,
          "precompute_clips_per_s": round(clips / encode_seconds, 2),
          "stored_mb_per_clip": round(stored / clips / 1e6, 3),
          "read_clip_ms": round(read_seconds * 1e3, 2),
          "batches_per_s": round(1 / (read_seconds * config.train.batch_size), 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clips", type=int, default=8)
  parser.add_argument("--configs", nargs="+", default=["tiny", "small"])
  parser.add_argument("--min-seconds", type=float, default=3.0)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    results = {name: measure(name, args.clips, args.min_seconds, os.path.join(root, name))
               for name in args.configs}
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
