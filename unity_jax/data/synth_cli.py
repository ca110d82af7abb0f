"""`unity-data synth`: procedural synthetic clips written as OpenUni shards.

Clip i gets source SOURCES[i % 4] (so sources are equal) and the per-source scene seed
--seed + i // 4, moved into the generator's held-out range (synthetic.eval_seed) for
--split eval: the data depends on (--seed, i, split) alone, not on --workers or resuming, and
eval scenes never repeat training scenes. Workers generate and encode;
the main process only appends record bytes. A run that dies is resumed by running the same
command again: clips already in complete staged shards are not generated again.

`--config configs/NAME.py[:ARGS]` takes the clip geometry (frames, height, width) from that
config's config.data, so `unity-data inspect` and training with the same config read the data;
without it the geometry is --frames/--size (default 17 frames of 64x64).
"""

import argparse
import importlib
import json
import os
import time
from typing import Any

from unity_jax import constants
from unity_jax.data import record as record_lib
from unity_jax.data import workers as workers_lib
from unity_jax.data import writer as writer_lib


DEFAULT_FRAMES = 17


def add_video_shape_arguments(parser: argparse.ArgumentParser, default_size: int) -> None:
  """--config, --frames, --size H W, --height, --width (shared by synth and convert)."""
  parser.add_argument("--config", metavar="configs/NAME.py[:ARGS]",
                      help="take frames, height and width from this config's config.data, so "
                      "the data fits the run that reads it; --frames/--size may repeat them "
                      "but not contradict them")
  parser.add_argument("--frames", type=int, default=None,
                      help=f"frames per clip, 4k+1 (the video VAE's temporal stride is 4; "
                      f"default {DEFAULT_FRAMES})")
  parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                      help=f"frame height and width (default {default_size} {default_size})")
  parser.add_argument("--height", type=int, help="frame height (alternative to --size)")
  parser.add_argument("--width", type=int, help="frame width (alternative to --size)")


def load_data_config(args: argparse.Namespace) -> Any:
  """config.data of --config (None without it); raises ValueError for a bad config."""
  if not getattr(args, "config", None):
    return None
  from unity_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load_config(args.config).data


def video_shape(args: argparse.Namespace, default_size: int) -> tuple[int, int, int]:
  """Returns (T, H, W) from parsed arguments, or raises ValueError saying what is wrong.

  With --config the geometry is the config's config.data (num_frames, height, width); explicit
  --frames/--size/--height/--width must then agree with it (a contradiction is an error rather
  than a silent override, since data of another geometry cannot be read with that config).
  """
  if args.size and (args.height or args.width):
    raise ValueError("give either --size H W or --height/--width, not both")
  given = (args.frames, *(args.size or (args.height, args.width)))
  data = load_data_config(args)
  if data is not None:
    wanted = (int(data.num_frames), int(data.height), int(data.width))
    for flag, value, expected in zip(("--frames", "height", "width"), given, wanted):
      if value is not None and value != expected:
        raise ValueError(f"{flag} {value} contradicts --config {args.config}, whose config.data "
                         f"asks for {wanted[0]} frames of {wanted[1]}x{wanted[2]}; drop the "
                         f"flag (--config sets the geometry) or use another config")
    frames, height, width = wanted
  else:
    frames = DEFAULT_FRAMES if given[0] is None else given[0]
    height, width = (default_size if v is None else v for v in given[1:])
  if frames < 1 or (frames - 1) % 4:
    raise ValueError(f"--frames must be 4k+1 (1, 5, 9, 13, 17, ...), got {frames}")
  if height < 1 or width < 1:
    raise ValueError(f"frame size must be positive, got {height}x{width}")
  return frames, height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--out", required=True, help="OpenUni data directory to write")
  parser.add_argument("--clips", type=int, default=64, help="number of clips")
  parser.add_argument("--seed", type=int, default=0, help="base seed")
  parser.add_argument("--split", choices=("train", "eval"), default="train")
  add_video_shape_arguments(parser, default_size=64)
  parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                      help="generator processes (<= 1 generates in this process)")
  parser.add_argument("--with-gt", action=argparse.BooleanOptionalAction, default=None,
                      help="store raw ground truth (default: only for --split eval)")
  parser.add_argument("--clips-per-shard", type=int, default=writer_lib.DEFAULT_CLIPS_PER_SHARD)
  parser.add_argument("--video-codec", choices=record_lib.VIDEO_CODECS,
                      default=record_lib.DEFAULT_VIDEO_CODEC)
  parser.add_argument("--no-resume", action="store_true",
                      help="discard staged shards of an interrupted run instead of resuming")


def clip_seed(seed: int, index: int, split: str) -> int:
  """The generator seed of clip `index` (seeds are per source, so ids stay unique)."""
  from unity_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  scene = seed + index // len(constants.SOURCES)
  if not 0 <= scene < synthetic.EVAL_SEED_OFFSET:
    raise ValueError(f"--seed {seed} with {index + 1} clips leaves the training seed range "
                     f"[0, {synthetic.EVAL_SEED_OFFSET})")
  return synthetic.eval_seed(scene) if split == "eval" else scene


def clip_source(index: int) -> str:
  return constants.SOURCES[index % len(constants.SOURCES)]


def _generate_record(task: tuple) -> tuple[int, bytes]:
  """Worker: generates clip `index` and returns its encoded record."""
  index, seed, split, frames, height, width, with_gt, video_codec = task
  from unity_jax.data.synthetic import generate_clip  # pylint: disable=g-import-not-at-top
  clip = dict(generate_clip(clip_seed(seed, index, split), clip_source(index),
                            num_frames=frames, height=height, width=width))
  if not with_gt:
    clip.pop("gt", None)
  elif not clip.get("gt"):
    raise ValueError(f"generate_clip returned no 'gt' for clip {index}, but --with-gt is set")
  return index, record_lib.encode_record(clip, video_codec, where=f"synthetic clip {index}")


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Generates and writes the clips; returns a summary (also printed by the CLI)."""
  frames, height, width = video_shape(args, default_size=64)
  if args.clips < 0:
    raise ValueError(f"--clips must be >= 0, got {args.clips}")
  with_gt = args.split == "eval" if args.with_gt is None else args.with_gt
  try:
    synthetic = importlib.import_module("unity_jax.data.synthetic")
  except ImportError as error:
    raise RuntimeError(f"the synthetic world is not importable: {error}") from None
  if not hasattr(synthetic, "generate_clip"):
    raise RuntimeError("unity_jax.data.synthetic does not export generate_clip yet")
  if args.clips:
    clip_seed(args.seed, args.clips - 1, args.split)  # Range check before any work.
  signature = {"command": "synth", "clips": args.clips, "seed": args.seed, "frames": frames,
               "height": height, "width": width, "with_gt": with_gt,
               "video_codec": args.video_codec}
  started = time.perf_counter()
  with writer_lib.SplitWriter(args.out, args.split, args.clips_per_shard,
                              resume=not args.no_resume, signature=signature,
                              video_codec=args.video_codec) as writer:
    done = writer.completed_keys
    tasks = [(i, args.seed, args.split, frames, height, width, with_gt, args.video_codec)
             for i in range(args.clips) if f"synth-{i}" not in done]
    for index, data in workers_lib.imap_ordered(_generate_record, tasks, args.workers):
      writer.add_record(data, key=f"synth-{index}")
  seconds = time.perf_counter() - started
  return {"out": args.out, "split": args.split, "clips": writer.entry["num_records"],
          "generated": len(tasks), "resumed": args.clips - len(tasks),
          "per_source": writer.entry["counts"]["source"], "with_gt": with_gt,
          "shape": [frames, height, width], "shards": len(writer.entry["shards"]),
          "seconds": round(seconds, 2),
          "clips_per_second": round(len(tasks) / seconds, 2) if seconds > 0 else None}


def main(args: argparse.Namespace) -> int:
  summary = run(args)
  print(json.dumps(summary))
  return 0
