"""unity_5b at full geometry: abstract state and AOT-compiled train step on 8 fake CPU devices.

  python benchmarks/unity_5b_compile.py [--config configs/unity_5b.py] [--out RESULT.json]

FSDP over all 8 devices (mesh fsdp=8, data=1), precomputed latents and umT5 embeddings as the
batch (data.precomputed: the step holds no codec, so no VAE weights are needed), the preset's
global batch 32 (4 per device). Nothing is allocated: the state is ShapeDtypeStructs and the step
is lowered and compiled (benchmarks/train_step.compile_step). Prints the per-device bytes of
`compiled.memory_analysis()` (arguments = the state's shard + the batch shard, outputs, temps)
next to total-state / 8. On a TPU the temp bytes differ (other fusion and layout choices); the
argument bytes are the sharding's and hold there too.
"""

import argparse
import json
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  pylint: disable=wrong-import-position

# Start the backend now: importing benchmarks/train_step.py resets XLA_FLAGS to one device.
NUM_DEVICES = jax.device_count()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from unity_jax import config as config_lib  # noqa: E402  pylint: disable=wrong-import-position
import train_step as train_step_bench  # noqa: E402  pylint: disable=wrong-import-position

GIB = 1 << 30


def full_geometry_config(spec: str):
  """The preset with FSDP over the 8 devices and a precomputed-data batch (no codec)."""
  config = config_lib.load_config(spec)
  config.mesh.update(data=1, fsdp=8, tensor=1, context=1)
  # The step only needs the batch's shapes; these paths are never opened.
  config.data.update(dir="/unused/openuni", precomputed="precomputed")
  config.train.data_source = "openuni"
  config.precompute.dtype = "bfloat16"
  return config


def state_bytes(abstract) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join(ROOT, "configs/unity_5b.py"))
  parser.add_argument("--out", help="JSON file for the result")
  args = parser.parse_args(argv)
  assert NUM_DEVICES == 8, jax.devices()
  config = full_geometry_config(args.config)
  start = time.perf_counter()
  _, report, abstract, _, _, _ = train_step_bench.compile_step(config)
  seconds = time.perf_counter() - start
  total = state_bytes(abstract)
  result = {"config": args.config, "devices": 8, "mesh": "fsdp=8", "global_batch":
            int(config.train.batch_size), "compile_s": round(seconds, 1),
            "state_bytes_total": total, "state_bytes_per_device_ideal": total // 8, **report}
  for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes"):
    print(f"{key:28s} {report.get(key, 0) / GIB:8.2f} GiB per device")
  print(f"{'train state total / 8':28s} {total / 8 / GIB:8.2f} GiB  (total {total / GIB:.1f} GiB)")
  print(f"compile time {seconds:.0f} s; step flops (per device) {report['flops']:.3e}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
