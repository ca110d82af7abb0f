"""`unity-data convert`: real videos, their rendered modality videos and captions -> OpenUni.

The manifest (CSV with a header row, or JSON lines) follows the PyTorch release's layout:

  video, prompt, depth, raft, segmentation, skeleton, densepose   (required columns)
  source, person_count, id, segmentation_targets                  (optional columns)

`video` and the five modality columns are paths relative to the manifest's directory (absolute
paths and `..` escapes are rejected); an empty modality cell marks the modality unavailable
(stored as black frames, `available=False`). `raft` holds the rendered optical-flow video.
Each video is decoded with imageio-ffmpeg, centre-cropped to the target aspect ratio and
resized by ffmpeg (area averaging; nearest for segmentation, so instance colours stay exact),
and T frames are sampled uniformly over its whole length (T = 4k+1).

Bad input raises ConvertError naming the row, the column and the file; with --skip-bad such
rows are skipped, counted and listed in `{out}/convert_report_{split}.json`.
"""

import argparse
import csv
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

import imageio_ffmpeg
import numpy as np

from unity_jax import constants
from unity_jax.data import prompts
from unity_jax.data import record as record_lib
from unity_jax.data import synth_cli
from unity_jax.data import workers as workers_lib
from unity_jax.data import writer as writer_lib

MODALITY_COLUMNS = {"depth": "depth", "raft": "flow", "segmentation": "segmentation",
                    "skeleton": "skeleton", "densepose": "densepose"}
REQUIRED_COLUMNS = ("video", "prompt") + tuple(MODALITY_COLUMNS)
OPTIONAL_COLUMNS = ("source", "person_count", "id", "segmentation_targets")
DEFAULT_PERSON_COUNT = {"single_person": 1, "two_person": 2}  # Others: -1 (unknown).
MAX_FRAME_COUNT_MISMATCH = 1  # e.g. RAFT flow videos have one frame fewer than the video.
MAX_ASPECT_MISMATCH = 0.02


class _DropResizeNotice(logging.Filter):
  """imageio-ffmpeg warns whenever output and source sizes differ, which is our intent."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("The frame size for reading")


logging.getLogger("imageio_ffmpeg").addFilter(_DropResizeNotice())


class ConvertError(ValueError):
  """Bad manifest input; the message names the manifest row, column and file."""

  def __init__(self, manifest: str, row: int | None, column: str | None, file: str | None,
               problem: str):
    self.row, self.column, self.file, self.problem = row, column, file, problem
    where = [manifest] + [f"{k} {v!r}" if k != "row" else f"row {v}" for k, v in
                          (("row", row), ("column", column), ("file", file)) if v is not None]
    super().__init__(f"{', '.join(where)}: {problem}")

  def as_dict(self) -> dict:
    return {"row": self.row, "column": self.column, "file": self.file, "error": self.problem}


def read_manifest_rows(path: str) -> list[dict[str, str]]:
  """Reads a CSV (header row) or JSONL manifest into a list of {column: str} rows."""
  with open(path, newline="", encoding="utf-8") as f:
    text = f.read()
  if path.endswith((".jsonl", ".ndjson")) or text.lstrip().startswith("{"):
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as error:
        raise ConvertError(path, len(rows) + 1, None, None,
                           f"line {number} is not JSON ({error})") from None
      if not isinstance(row, dict):
        raise ConvertError(path, len(rows) + 1, None, None, "a JSONL row must be an object")
      rows.append({k: "" if v is None else str(v) for k, v in row.items()})
  else:
    reader = csv.DictReader(text.splitlines())
    rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    columns = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
      raise ConvertError(path, None, None, None, f"header lacks columns {missing} (has {columns})")
  for number, row in enumerate(rows, start=1):
    missing = [c for c in REQUIRED_COLUMNS if c not in row]
    if missing:
      raise ConvertError(path, number, missing[0], None, f"row lacks columns {missing}")
  return rows


def resolve_path(manifest: str, row: int, column: str, value: str) -> str:
  """Returns the file of a manifest cell, refusing paths that leave the manifest's directory."""
  root = os.path.dirname(os.path.abspath(manifest))
  if os.path.isabs(value) or value.startswith("~"):
    raise ConvertError(manifest, row, column, value, "absolute paths are not allowed; give a "
                       "path relative to the manifest's directory")
  normalized = os.path.normpath(value)
  if normalized == ".." or normalized.startswith(".." + os.sep):
    raise ConvertError(manifest, row, column, value, "path escapes the manifest's directory")
  path = os.path.join(root, normalized)
  if not os.path.isfile(path):
    raise ConvertError(manifest, row, column, value, "file does not exist")
  return path


def _filters(height: int, width: int, nearest: bool) -> str:
  """ffmpeg filter chain: centre crop to the W:H aspect ratio, then resize to exactly W x H."""
  crop = f"crop=w='min(iw,ih*{width}/{height})':h='min(ih,iw*{height}/{width})'"
  return f"{crop},scale={width}:{height}:flags={'neighbor' if nearest else 'area'},setsar=1"


def load_video(path: str, num_frames: int, height: int, width: int,
               nearest: bool = False) -> tuple[np.ndarray, dict]:
  """Decodes `num_frames` frames sampled uniformly over the video, cropped and resized.

  Returns:
    (uint8 [num_frames, height, width, 3], {"frames": frame count, "source_size": (w, h)}).
  Raises:
    ValueError (message says why) for unreadable or too short videos.
  """
  try:
    total, _ = imageio_ffmpeg.count_frames_and_secs(path)
  except (RuntimeError, OSError) as error:
    raise ValueError(f"not a readable video ({str(error).splitlines()[0]})") from None
  if total < num_frames:
    raise ValueError(f"video has {total} frames, fewer than the {num_frames} to sample")
  wanted = np.linspace(0, total - 1, num_frames).round().astype(int)
  frames, source_size = read_frames_at(path, wanted, height, width, nearest)
  return frames, {"frames": total, "source_size": source_size}


def read_frames_at(path: str, indices: np.ndarray, height: int, width: int,
                   nearest: bool) -> tuple[np.ndarray, tuple[int, int]]:
  """Streams the video through ffmpeg, keeping frames `indices` (sorted, may repeat).

  Returns:
    (uint8 [len(indices), height, width, 3], the encoded frame size (width, height)).
  """
  output = np.zeros((len(indices), height, width, 3), np.uint8)
  reader = imageio_ffmpeg.read_frames(path, output_params=["-vf", _filters(height, width, nearest)])
  try:
    meta = next(reader)
    if tuple(meta["size"]) != (width, height):
      raise ValueError(f"ffmpeg produced {meta['size']} frames, expected {(width, height)}")
    filled, frame_index = 0, 0
    for frame in reader:
      while filled < len(indices) and indices[filled] == frame_index:
        output[filled] = np.frombuffer(frame, np.uint8).reshape(height, width, 3)
        filled += 1
      if filled == len(indices):
        break
      frame_index += 1
  except (RuntimeError, OSError) as error:
    raise ValueError(f"decoding failed ({str(error).splitlines()[0]})") from None
  finally:
    reader.close()
  if filled < len(indices):
    raise ValueError(f"decoded only {frame_index} frames, fewer than counted; the file is "
                     "truncated or damaged")
  return output, tuple(meta["source_size"])


def plan_row(manifest: str, number: int, row: dict[str, str], default_source: str,
             ids: set[str]) -> dict[str, Any]:
  """Checks one row without decoding and returns the worker task (paths, metadata)."""
  source = row.get("source") or default_source
  if source not in constants.SOURCES:
    raise ConvertError(manifest, number, "source", None,
                       f"source {source!r} is not one of {list(constants.SOURCES)}")
  caption = row["prompt"].strip()
  if not caption:
    raise ConvertError(manifest, number, "prompt", None, "the caption is empty")
  count_text = row.get("person_count", "").strip()
  try:
    person_count = int(count_text) if count_text else DEFAULT_PERSON_COUNT.get(source, -1)
    if person_count < -1:
      raise ValueError
  except ValueError:
    raise ConvertError(manifest, number, "person_count", None,
                       f"person_count must be an int >= 0 (or empty), got {count_text!r}") from None
  video = resolve_path(manifest, number, "video", row["video"])
  modalities = {}
  for column, modality in MODALITY_COLUMNS.items():
    if row[column]:
      modalities[modality] = (column, row[column], resolve_path(manifest, number, column,
                                                                row[column]))
  clip_id = row.get("id") or f"{source}-{hashlib.sha1(row['video'].encode()).hexdigest()[:16]}"
  if clip_id in ids:
    raise ConvertError(manifest, number, "id" if row.get("id") else "video", row["video"],
                       f"duplicate clip id {clip_id!r} (the same video twice?)")
  ids.add(clip_id)
  return {"manifest": manifest, "row": number, "id": clip_id, "source": source,
          "caption": caption, "person_count": person_count,
          "segmentation_targets": row.get("segmentation_targets") or
          prompts.DEFAULT_SEGMENTATION_TARGETS,
          "video": (row["video"], video), "modalities": modalities}


def convert_row(task: dict[str, Any]) -> tuple[int, bytes | None, dict | None]:
  """Worker: decodes one planned row; returns (row, record bytes, None) or (row, None, error)."""
  frames, height, width, video_codec = task["shape"]
  manifest, row = task["manifest"], task["row"]
  try:
    relative, path = task["video"]
    try:
      rgb, rgb_info = load_video(path, frames, height, width)
    except ValueError as error:
      raise ConvertError(manifest, row, "video", relative, str(error)) from None
    rgb_aspect = rgb_info["source_size"][0] / rgb_info["source_size"][1]
    modalities = {name: np.zeros_like(rgb) for name in constants.MODALITIES}
    for name, (column, relative, path) in task["modalities"].items():
      try:
        video, info = load_video(path, frames, height, width, nearest=name == "segmentation")
      except ValueError as error:
        raise ConvertError(manifest, row, column, relative, str(error)) from None
      if abs(info["frames"] - rgb_info["frames"]) > MAX_FRAME_COUNT_MISMATCH:
        raise ConvertError(manifest, row, column, relative,
                           f"has {info['frames']} frames but the video has "
                           f"{rgb_info['frames']}: not aligned with it")
      aspect = info["source_size"][0] / info["source_size"][1]
      if abs(aspect / rgb_aspect - 1) > MAX_ASPECT_MISMATCH:
        raise ConvertError(manifest, row, column, relative,
                           f"is {info['source_size'][0]}x{info['source_size'][1]} but the video is "
                           f"{rgb_info['source_size'][0]}x{rgb_info['source_size'][1]}: not "
                           "pixel-aligned with it")
      modalities[name] = video
    clip = {"id": task["id"], "source": task["source"], "caption": task["caption"],
            "person_count": task["person_count"],
            "segmentation_targets": task["segmentation_targets"], "rgb": rgb,
            "modalities": modalities,
            "available": {name: name in task["modalities"] for name in constants.MODALITIES}}
    return row, record_lib.encode_record(clip, video_codec, where=f"{manifest} row {row}"), None
  except ConvertError as error:
    return row, None, error.as_dict()


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--manifest", required=True, help="CSV or JSONL manifest of videos")
  parser.add_argument("--out", required=True, help="OpenUni data directory to write")
  parser.add_argument("--split", default="train", help="split name (default train)")
  synth_cli.add_video_shape_arguments(parser, default_size=256)
  parser.add_argument("--source", default="general", choices=constants.SOURCES,
                      help="source group of rows without a 'source' column (default general)")
  parser.add_argument("--skip-bad", action="store_true",
                      help="skip bad rows (listed in the report) instead of stopping")
  parser.add_argument("--workers", type=int, default=1, help="decoding processes")
  parser.add_argument("--clips-per-shard", type=int, default=writer_lib.DEFAULT_CLIPS_PER_SHARD)
  parser.add_argument("--video-codec", choices=record_lib.VIDEO_CODECS,
                      default=record_lib.DEFAULT_VIDEO_CODEC)
  parser.add_argument("--no-resume", action="store_true",
                      help="discard staged shards of an interrupted run instead of resuming")


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Converts the manifest; returns the report (also written as JSON next to the shards)."""
  frames, height, width = synth_cli.video_shape(args, default_size=256)
  manifest = args.manifest
  rows = read_manifest_rows(manifest)
  bad: list[dict] = []
  tasks, ids = [], set()
  for number, row in enumerate(rows, start=1):
    try:
      tasks.append(plan_row(manifest, number, row, args.source, ids))
    except ConvertError as error:
      if not args.skip_bad:
        raise
      bad.append(error.as_dict())
  with open(manifest, "rb") as f:
    manifest_sha256 = hashlib.sha256(f.read()).hexdigest()
  signature = {"command": "convert", "manifest_sha256": manifest_sha256, "frames": frames,
               "height": height, "width": width, "video_codec": args.video_codec}
  started = time.perf_counter()
  with writer_lib.SplitWriter(args.out, args.split, args.clips_per_shard,
                              resume=not args.no_resume, signature=signature,
                              video_codec=args.video_codec) as writer:
    done = writer.completed_keys
    todo = [dict(task, shape=(frames, height, width, args.video_codec)) for task in tasks
            if f"row-{task['row']}" not in done]
    converted = 0
    for number, data, error in workers_lib.imap_ordered(convert_row, todo, args.workers):
      if error is not None:
        if not args.skip_bad:
          raise ConvertError(manifest, error["row"], error["column"], error["file"],
                             error["error"])
        bad.append(error)
      else:
        writer.add_record(data, key=f"row-{number}")
        converted += 1
  report = {"manifest": manifest, "out": args.out, "split": args.split, "rows": len(rows),
            "written": writer.entry["num_records"], "converted": converted,
            "resumed": len(tasks) - len(todo), "skipped_bad": len(bad),
            "per_source": writer.entry["counts"]["source"],
            "long_captions": long_captions(args, tasks),
            "seconds": round(time.perf_counter() - started, 2),
            "bad": sorted(bad, key=lambda b: b["row"])}
  writer_lib.atomic_write_json(os.path.join(args.out, f"convert_report_{args.split}.json"), report)
  return report


def long_captions(args: argparse.Namespace, tasks: list[dict]) -> dict[str, Any]:
  """Captions whose byte tokens (BOS + UTF-8 bytes + EOS, the built-in tokenizer) exceed the
  caption_len of --config (or the base config's): training would truncate them. (With
  precomputed caption embeddings caption_len counts umT5 tokens; bytes overcount them.)

  Returns {"caption_len", "count", "max_tokens", "rows": first 20 such manifest rows}.
  """
  from unity_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from unity_jax.model import text  # pylint: disable=g-import-not-at-top
  data = synth_cli.load_data_config(args) or config_lib.base_config().data
  caption_len = int(data.caption_len)
  lengths = [(task["row"], text.token_length(task["caption"])) for task in tasks]
  long = [row for row, length in lengths if length > caption_len]
  return {"caption_len": caption_len, "count": len(long),
          "max_tokens": max((length for _, length in lengths), default=0), "rows": long[:20]}


def main(args: argparse.Namespace) -> int:
  report = run(args)
  print(json.dumps({k: v for k, v in report.items() if k != "bad"}))
  long = report["long_captions"]
  if long["count"]:
    print(f"warning: {long['count']} caption(s) are longer than data.caption_len="
          f"{long['caption_len']} tokens (up to {long['max_tokens']}; rows {long['rows']}) and "
          f"will be truncated in training; raise data.caption_len (and model.text_max_len)",
          file=sys.stderr)
  for entry in report["bad"]:
    print(f"skipped row {entry['row']} ({entry['column']}: {entry['file']}): {entry['error']}")
  return 0
