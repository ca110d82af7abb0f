"""What the CPU start-up tricks buy: the tuned glibc malloc (unity_jax/host_allocator.py) and the
dots to Eigen (unity_jax/xla_options.py), on and off, alternated in one run.

  python benchmarks/cpu_tricks.py [--config tiny] [--rounds 3] [--steps 8] [--settings both,neither]

Each round runs `benchmarks/train_step.py --configs CONFIG --no-fsdp` once per setting (a fresh
process each, since glibc reads its tunables at start-up), switching the tricks off with their
opt-out variables (UNITY_JAX_MALLOC_TUNING=0, UNITY_JAX_CPU_DOTS=ynnpack). Settings alternate
within every round, so a shared machine's load falls on all of them alike. Prints the median
step time per setting over all its steps and the ratio to "both" (above 1: slower than with both
tricks). The default config is the quickstart's (configs/tiny.py), whose training is most of the
quickstart's wall time.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent
SETTINGS = {
    "both": {},
    "no malloc tuning": {"UNITY_JAX_MALLOC_TUNING": "0"},
    "no Eigen dots": {"UNITY_JAX_CPU_DOTS": "ynnpack"},
    "neither": {"UNITY_JAX_MALLOC_TUNING": "0", "UNITY_JAX_CPU_DOTS": "ynnpack"},
}


def run_once(config: str, steps: int, extra_env: dict) -> list[float]:
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "UNITY_JAX_MALLOC_TUNING", "UNITY_JAX_CPU_DOTS")}
  env.update(extra_env, JAX_PLATFORMS="cpu")
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    subprocess.run([sys.executable, str(ROOT / "train_step.py"), "--configs", config,
                    "--no-fsdp", "--steps", str(steps), "--out", out], env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=3600)
    with open(out) as f:
      return json.load(f)[config]["step_times_s"]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="tiny")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=8, help="timed steps per process")
  parser.add_argument("--settings", default=",".join(SETTINGS),
                      help=f"comma-separated, from: {', '.join(SETTINGS)}")
  args = parser.parse_args()
  names = args.settings.split(",")
  if "both" not in names or not set(names) <= set(SETTINGS):
    parser.error(f"--settings must include 'both' and name only: {', '.join(SETTINGS)}")
  times = {name: [] for name in names}
  for r in range(args.rounds):
    for name in names:
      step_times = run_once(args.config, args.steps, SETTINGS[name])
      times[name] += step_times
      print(f"round {r + 1} {name:17s} median {np.median(step_times):.3f} s "
            f"({min(step_times):.3f}-{max(step_times):.3f})", flush=True)
  both = float(np.median(times["both"]))
  print(f"{args.config}: median step time over {args.rounds} rounds x {args.steps} steps")
  for name, values in times.items():
    median = float(np.median(values))
    print(f"  {name:17s} {median:.3f} s  ratio to both {median / both:.3f}")


if __name__ == "__main__":
  main()
