"""`unity-eval`: UniBench-synth on a trained workdir (docs/evaluation.md).

  unity-eval --workdir runs/tiny --data data/synth [--out runs/tiny/eval/unibench_synth.json]
             [--split eval] [--clips 16] [--steps 20] [--estimate-steps 1] [--samples DIR]
             [--report FILE.html]

Prints the markdown table (model next to trivial baselines) and writes the JSON. `--samples`
also writes side-by-side videos (.mp4, .gif, .png) of the first clip of every task and
modality; `--report` writes the HTML report (videos, loss curves, metrics, config, fingerprint).
Exit status: 0 done, 2 bad arguments, data or workdir.
"""

import argparse
import json
import logging
import os
import sys
import time

from unity_jax import constants
from unity_jax import host_allocator
from unity_jax import io_utils

DEFAULT_OUT = os.path.join("eval", "unibench_synth.json")
"""--out default, relative to the workdir."""
JAX_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "unity_jax", "jax")
"""The persistent XLA cache unity-train uses too: a re-run skips recompiling the samplers."""


class UsageError(Exception):
  """Bad data directory, split or workdir: reported in one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="unity-eval", description="UniBench-synth: estimate / control / joint generation of "
      "a trained workdir scored against the synthetic world's exact ground truth.")
  parser.add_argument("--workdir", required=True, help="unity-train workdir (checkpoints/)")
  parser.add_argument("--data", required=True, help="OpenUni directory with an eval split")
  parser.add_argument("--out", help=f"JSON file (default <workdir>/{DEFAULT_OUT})")
  parser.add_argument("--split", default="eval", help="split with ground truth (default eval)")
  parser.add_argument("--clips", type=int, default=16,
                      help="eval clips, sources interleaved (default 16)")
  parser.add_argument("--steps", type=int, default=20,
                      help="ODE steps of control and joint generation (default 20)")
  parser.add_argument("--estimate-steps", type=int, default=1,
                      help="ODE steps of estimation; 1 = the deterministic posterior-mean "
                      "estimate (default 1)")
  parser.add_argument("--guidance", type=float, default=4.0,
                      help="caption CFG scale of control and joint generation (default 4)")
  parser.add_argument("--solver", default="euler", help="ODE solver (default euler)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=int, default=8, help="clips per sampling call")
  parser.add_argument("--tasks", nargs="+", default=None, help="subset of estimate control joint")
  parser.add_argument("--modalities", nargs="+", default=None,
                      help=f"subset of {' '.join(constants.MODALITIES)}")
  parser.add_argument("--weights", choices=("ema", "raw"), default="ema")
  parser.add_argument("--samples", help="directory for side-by-side sample videos")
  parser.add_argument("--report", help="HTML report to write (needs --samples for videos)")
  parser.add_argument("--jax-cache-dir", default=JAX_CACHE_DIR,
                      help="persistent XLA compilation cache ('' disables)")
  return parser


def _configure_jax(cache_dir: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if cache_dir and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  # Orbax and jax log restores and backend probes at INFO through absl; the table is the output.
  logging.getLogger("absl").setLevel(logging.WARNING)


def _read_json(path: str):
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def evaluate(args: argparse.Namespace) -> dict:
  """Runs the benchmark for parsed arguments; returns the JSON summary (also written)."""
  from unity_jax.eval import html_report  # pylint: disable=g-import-not-at-top
  from unity_jax.eval import report  # pylint: disable=g-import-not-at-top
  from unity_jax.eval import unibench  # pylint: disable=g-import-not-at-top
  from unity_jax.sample.pipeline import Pipeline  # pylint: disable=g-import-not-at-top
  settings = unibench.EvalSettings(
      num_steps=args.steps, estimate_steps=args.estimate_steps, guidance_scale=args.guidance,
      seed=args.seed, solver=args.solver,
      batch_size=args.batch_size, tasks=tuple(args.tasks or unibench.TASKS),
      modalities=tuple(args.modalities or constants.MODALITIES),
      keep_samples=1 if args.samples else 0)
  log = lambda message: print(f"unity-eval: {message}", flush=True)  # noqa: E731
  start = time.perf_counter()
  try:
    clips = unibench.load_clips(args.data, args.split, args.clips)
    pipe = Pipeline.from_workdir(args.workdir, weights=args.weights)
  except (FileNotFoundError, ValueError, KeyError) as error:
    raise UsageError(str(error)) from None
  log(f"loaded {args.workdir} step {pipe.step} ({pipe.weights} weights) in "
      f"{time.perf_counter() - start:.1f} s; {len(clips)} {args.split} clips from {args.data}")
  result = unibench.run(pipe, clips, settings, log=log)
  summary = dict(result.summary, workdir=os.path.abspath(args.workdir),
                 data=os.path.abspath(args.data), split=args.split, step=pipe.step,
                 weights=pipe.weights,
                 fingerprint=_read_json(os.path.join(args.workdir, "summary.json")))
  out = args.out or os.path.join(args.workdir, DEFAULT_OUT)
  if args.samples:
    summary["samples"] = html_report.write_samples(result.samples, args.samples)
  io_utils.atomic_write_json(out, summary)   # a crash keeps the previous eval JSON whole
  print(report.format_markdown_table(summary["results"]))
  for name, check in summary["headline"].items():
    verdict = (f"target {check['target']}: {'met' if check['met'] else 'NOT met'}"
               if "target" in check else "reported, no target")
    print(f"{name}: model {check['model']:.4f} vs baseline {check['baseline']:.4f} "
          f"(ratio {check['ratio']:.3f}, {verdict})")
  log(f"wrote {out}")
  if args.report:
    html_report.write_report(args.report, summary, args.workdir)
    log(f"wrote {args.report}")
  return summary


def main(argv=None) -> int:
  if argv is None:  # the console script, not a call from Python
    host_allocator.maybe_reexec()
  args = build_parser().parse_args(argv)
  if min(args.clips, args.steps, args.estimate_steps, args.batch_size) < 1:
    print("unity-eval: --clips, --steps, --estimate-steps and --batch-size must be >= 1",
          file=sys.stderr)
    return 2
  _configure_jax(args.jax_cache_dir)
  try:
    evaluate(args)
  except UsageError as error:
    print(f"unity-eval: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
