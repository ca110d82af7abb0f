"""Data throughput next to what training consumes, measured in one run.

  python benchmarks/data.py [--step-times STEP_TIMES.json] [--out RESULT.json]

For each of configs/tiny.py and configs/small.py (their clip shape and global batch):
  1. synthetic generator: clips/s of `unity_jax.data.synthetic.generate_clip` (single process);
     the generated clips are written as an OpenUni directory in a temporary folder;
  2. input pipeline: batches/s of `make_train_iterator` over that directory with 0 worker
     processes (decode in this process) and with 2 (`mp_prefetch`), after the first batch (so
     worker start-up is excluded);
  3. training consumption: 1 / step time. Step times come from --step-times, a JSON file
     {"tiny": seconds, "small": seconds} (a value may also be an object with "step_time_s");
     without it the needed rate is printed as NOT MEASURED.
  4. precomputed pipeline (data.precomputed): the same directory through `unity-data
     precompute` (the config's codec; float32 latents), then batches/s of the iterator over the
     stored latents, and the bytes one batch reads from the store (latent + embedding chunks,
     uncompressed sizes: what a step consumes).
Headroom = pipeline batches/s / needed batches/s; the target is >= 10x. The pipeline and the
trainer share the same 2 cores in a real run, so headroom on an idle machine is an upper bound.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.data import fakes
from unity_jax.data import pipeline
from unity_jax.data import writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("tiny", "small")
HEADROOM_TARGET = 10.0


def _generator():
  """generate_clip if the synthetic world is installed, else None (fake noise clips are used)."""
  try:
    from unity_jax.data.synthetic import generate_clip  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return generate_clip


def generate_clips(config, clips_per_source: int) -> tuple[list[dict], float | None]:
  """Clips of the config's shape for every source, and the generator's clips/s (None if fake)."""
  generate = _generator()
  shape = dict(num_frames=config.data.num_frames, height=config.data.height,
               width=config.data.width)
  clips, start = [], time.perf_counter()
  for source in constants.SOURCES:
    for seed in range(clips_per_source):
      if generate is None:
        clips.append(fakes.fake_clip(seed, source, with_gt=False, **shape))
      else:
        clips.append(generate(seed, source, **shape))
  rate = len(clips) / (time.perf_counter() - start) if generate is not None else None
  return clips, rate


def pipeline_rate(config, stage_index: int, workers: int, batches: int,
                  min_seconds: float) -> float:
  """Batches/s of the training iterator after its first batch (start-up excluded)."""
  config.data.worker_count = workers
  iterator = pipeline.make_train_iterator(config, stage_index)
  try:
    next(iterator)
    count, start = 0, time.perf_counter()
    while count < batches or time.perf_counter() - start < min_seconds:
      next(iterator)
      count += 1
    return count / (time.perf_counter() - start)
  finally:
    iterator.close()


STORED_FIELDS = ("rgb_latents", "modality_latents", "caption_embedding",
                 "modality_prompt_embedding")


def precomputed_rates(config, stage_index: int, data_dir: str, workers, batches: int,
                      min_seconds: float) -> tuple[dict, int, float]:
  """({workers: batches/s} over precomputed latents, stored bytes per batch, precompute s)."""
  from unity_jax.data import precompute  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  precompute.run(config, data_dir)
  seconds = time.perf_counter() - start
  config.data.precomputed = "precomputed"
  config.train.data_source = "openuni"
  config.data.worker_count = 0
  iterator = pipeline.make_train_iterator(config, stage_index)
  try:
    batch = next(iterator)
  finally:
    iterator.close()
  stored = sum(int(np.asarray(batch[k]).nbytes) for k in STORED_FIELDS if k in batch)
  rates = {w: pipeline_rate(config, stage_index, w, batches, min_seconds) for w in workers}
  config.data.precomputed = ""
  return rates, stored, seconds


def read_step_times(path: str | None) -> dict[str, float]:
  if not path:
    return {}
  with open(path) as f:
    raw = json.load(f)
  times = {}
  for name, value in raw.items():
    if isinstance(value, dict):
      value = value.get("step_time_s", value.get("seconds_per_step"))
    if isinstance(value, (int, float)) and value > 0:
      times[name] = float(value)
  return times


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--step-times", default=None, help="JSON {config: seconds per step}")
  parser.add_argument("--clips-per-source", type=int, default=4)
  parser.add_argument("--batches", type=int, default=20, help="minimum batches per measurement")
  parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum time per measurement")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
  parser.add_argument("--out", default=None, help="also write the results as JSON")
  args = parser.parse_args(argv)
  step_times = read_step_times(args.step_times)
  results = {}
  print(f"generator: {'generate_clip' if _generator() else 'ABSENT (fake noise clips used)'}; "
        f"cores: {os.cpu_count()}")
  for name in CONFIGS:
    config = config_lib.load_config(os.path.join(REPO, "configs", f"{name}.py"))
    stage_index = len(config.stages) - 1  # The last stage samples every source.
    clips, gen_rate = generate_clips(config, args.clips_per_source)
    with tempfile.TemporaryDirectory() as data_dir:
      writer.write_clips(clips, data_dir, "train", clips_per_shard=args.clips_per_source)
      config.data.dir = data_dir
      rates = {w: pipeline_rate(config, stage_index, w, args.batches, args.min_seconds)
               for w in args.workers}
      pre_rates, pre_bytes, pre_seconds = precomputed_rates(
          config, stage_index, data_dir, args.workers, args.batches, args.min_seconds)
    step = step_times.get(name)
    results[name] = {
        "shape": [config.data.num_frames, config.data.height, config.data.width],
        "batch_size": int(config.train.batch_size), "stage": stage_index,
        "generator_clips_per_s": gen_rate,
        "pipeline_batches_per_s": {str(w): r for w, r in rates.items()},
        "pipeline_clips_per_s": {str(w): r * config.train.batch_size for w, r in rates.items()},
        "train_step_s": step,
        "needed_batches_per_s": 1.0 / step if step else None,
        "headroom": {str(w): r * step for w, r in rates.items()} if step else None,
        "precompute_s": pre_seconds,
        "precomputed_batches_per_s": {str(w): r for w, r in pre_rates.items()},
        "precomputed_bytes_per_step": pre_bytes,
        "precomputed_headroom": ({str(w): r * step for w, r in pre_rates.items()} if step
                                 else None),
    }
  _print_table(results)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
  return 0


def _print_table(results: dict) -> None:
  print()
  for name, r in results.items():
    t, h, w = r["shape"]
    gen = (f"{r['generator_clips_per_s']:.1f} clips/s" if r["generator_clips_per_s"]
           else "not measured (generator absent)")
    print(f"{name}: clips {t}x{h}x{w}, global batch {r['batch_size']}, stage {r['stage']}")
    print(f"  synthetic generator      {gen}")
    for workers, rate in r["pipeline_batches_per_s"].items():
      print(f"  pipeline, {workers} workers      {rate:8.1f} batches/s "
            f"({r['pipeline_clips_per_s'][workers]:.0f} clips/s)")
    if r["train_step_s"]:
      print(f"  train step               {r['train_step_s']:.3f} s -> needs "
            f"{r['needed_batches_per_s']:.2f} batches/s")
      for workers, headroom in r["headroom"].items():
        verdict = ("ok" if headroom >= HEADROOM_TARGET
                   else f"BELOW the {HEADROOM_TARGET:.0f}x target")
        print(f"  headroom, {workers} workers      {headroom:8.1f}x  {verdict}")
    for workers, rate in r["precomputed_batches_per_s"].items():
      headroom = (f", headroom {r['precomputed_headroom'][workers]:.1f}x"
                  if r["precomputed_headroom"] else "")
      print(f"  precomputed, {workers} workers   {rate:8.1f} batches/s{headroom}")
    print(f"  precomputed bytes/step   {r['precomputed_bytes_per_step'] / 1024:8.1f} KiB "
          f"(precompute {r['precompute_s']:.1f} s)")
    if not r["train_step_s"]:
      print("  train step               NOT MEASURED (pass --step-times); needed batches/s = "
            "1 / step time")
      for workers, rate in r["pipeline_batches_per_s"].items():
        print(f"  {workers} workers keep {HEADROOM_TARGET:.0f}x headroom for steps >= "
              f"{HEADROOM_TARGET / rate:.3f} s")


if __name__ == "__main__":
  sys.exit(main())
