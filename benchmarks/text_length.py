"""Train-step cost of the text lengths: a config at its caption/prompt lengths vs shorter ones.

  python benchmarks/text_length.py [--config tiny] [--baseline 64,32,64] [--steps 10]

Compiles the train step twice (the config as is, and with data.caption_len, data.prompt_len,
model.text_max_len = --baseline) and times the two alternately, step by step, so both see the
same load on a shared machine. Prints the XLA FLOPs of each and the median step-time ratio
(this config / baseline). The text lengths drive cross-attention (RGB tokens x caption tokens,
modality tokens x prompt tokens) and the text encoder (quadratic in the length).
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_step as bench  # noqa: E402  (benchmarks/train_step.py: config + AOT compile)

from unity_jax.parallel import mesh as mesh_lib  # noqa: E402
from unity_jax.train import sources  # noqa: E402
from unity_jax.train import state as state_lib  # noqa: E402


def _prepared(config):
  compiled, report, _, shardings, mesh, optimizer = bench.compile_step(config)
  state = state_lib.create_state(config, mesh, optimizer, shardings)
  source = sources.RandomSource(config, 0)
  batch = mesh_lib.shard_batch(source.next_batch(0), mesh)
  return {"compiled": compiled, "state": state, "batch": batch, "flops": report["flops"]}


def _step(run) -> float:
  start = time.perf_counter()
  run["state"], metrics = run["compiled"](run["state"], run["batch"])
  jax.block_until_ready((run["state"], metrics))
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="tiny")
  parser.add_argument("--baseline", default="64,32,64",
                      help="caption_len,prompt_len,text_max_len to compare with")
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  caption_len, prompt_len, text_max_len = map(int, args.baseline.split(","))
  config = bench.benchmark_config(args.config)
  baseline = config.copy_and_resolve_references()
  baseline.data.update(caption_len=caption_len, prompt_len=prompt_len)
  baseline.model.text_max_len = text_max_len
  runs = {"config": _prepared(config), "baseline": _prepared(baseline)}
  for run in runs.values():                                            # warm-up
    _step(run), _step(run)
  times = {name: [] for name in runs}
  for _ in range(args.steps):
    for name, run in runs.items():
      times[name].append(_step(run))
  ratios = np.asarray(times["config"]) / np.asarray(times["baseline"])
  print(json.dumps({
      "config": args.config,
      "lengths": [int(config.data.caption_len), int(config.data.prompt_len),
                  int(config.model.text_max_len)],
      "baseline_lengths": [caption_len, prompt_len, text_max_len],
      "step_s": {n: round(float(np.median(t)), 4) for n, t in times.items()},
      "step_time_ratio_median": round(float(np.median(ratios)), 3),
      "step_time_ratio_range": [round(float(ratios.min()), 3), round(float(ratios.max()), 3)],
      "flops_ratio": round(runs["config"]["flops"] / runs["baseline"]["flops"], 3)}))


if __name__ == "__main__":
  main()
