"""`unity-data inspect`: what the training pipeline actually feeds, batch by batch.

  unity-data inspect --data DIR --config configs/tiny.py[:smoke] [--stage N] [--batches K]
                     [--json] [--sheet out.png]

Prints per-batch counts by source, modality and task (a table, or JSON lines with --json) of
the process-local batches `make_train_iterator` yields, and optionally writes a contact sheet
PNG: one row per clip of the first batch, RGB frames | modality frames. Then the token-length
distribution of the split's captions and modality prompts (min / median / max byte tokens, and
how many are longer than, so truncated at, the config's data.caption_len / prompt_len; a
warning when any are), and the truncations the pipeline counted in the batches read.
"""

import argparse
import json
import sys
from typing import Any, Iterable, Mapping, Sequence, TextIO

import numpy as np
from PIL import Image, ImageDraw

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.data import pipeline
from unity_jax.data import prompts
from unity_jax.data import sampling
from unity_jax.model import text

SHEET_FRAMES = 4
SHEET_ROWS = 8
SHEET_MIN_FRAME_HEIGHT = 64
_LABEL_HEIGHT = 14
_GAP = 6


def _flat_names() -> list[tuple[str, str]]:
  """(group, name) columns of the table, in a stable order."""
  return ([("source", s) for s in constants.SOURCES]
          + [("modality", m) for m in (*constants.MODALITIES, "none")]
          + [("task", t) for t in constants.LOSS_TASKS])


def format_table_header() -> str:
  groups = {"source": [], "modality": [], "task": []}
  for group, name in _flat_names():
    groups[group].append(name)
  return "batch | " + " | ".join(" ".join(names) for names in groups.values())


def format_table_row(label: str, counts: Mapping[str, Mapping[str, int]]) -> str:
  cells = {"source": [], "modality": [], "task": []}
  for group, name in _flat_names():
    cells[group].append(f"{counts[group][name]:>{len(name)}d}")
  return f"{label:>5} | " + " | ".join(" ".join(c) for c in cells.values())


def report(batches: Iterable[Mapping[str, np.ndarray]], *, as_json: bool,
           out: TextIO) -> dict[str, dict[str, int]]:
  """Prints per-batch counts (table or JSON lines) and returns the totals."""
  totals = {group: {name: 0 for g, name in _flat_names() if g == group}
            for group in ("source", "modality", "task")}
  if not as_json:
    print(format_table_header(), file=out)
  for index, batch in enumerate(batches):
    counts = pipeline.batch_counts(batch)
    for group, values in counts.items():
      for name, value in values.items():
        totals[group][name] += value
    if as_json:
      print(json.dumps({"batch": index, **counts}), file=out)
    else:
      print(format_table_row(str(index), counts), file=out)
  if not as_json:
    print(format_table_row("total", totals), file=out)
  return totals


TEXT_ONLY = ("rgb", "modalities", "gt", "latents", "caption_embedding")
"""Record groups not decoded when reading texts: only header fields (caption, targets) remain."""


def _distribution(lengths: Sequence[int], max_len: int) -> dict[str, Any]:
  values = np.asarray(lengths, np.int64)
  if not values.size:
    return {"count": 0, "max_len": max_len, "truncated": 0}
  return {"count": int(values.size), "min": int(values.min()),
          "median": float(np.median(values)), "max": int(values.max()), "max_len": max_len,
          "truncated": int(np.sum(values > max_len))}


def text_lengths(reader: Any, split: str, caption_len: int, prompt_len: int) -> dict[str, dict]:
  """Token lengths (text.token_length: BOS + bytes + EOS) of every caption of `split` and of the
  modality prompt of every available (record, modality) pair, the way training tokenizes them.

  Returns {"caption": stats, "prompt": stats}, stats = {"count", "min", "median", "max",
  "max_len", "truncated"} where "truncated" counts texts longer than max_len.
  """
  captions, prompt_lengths = [], []
  for source in reader.sources(split):
    clips = reader.source(split, source, skip=TEXT_ONLY)
    for index in range(len(clips)):
      clip = clips[index]
      captions.append(text.token_length(str(clip.get("caption", ""))))
      for modality, available in clip.get("available", {}).items():
        if available:
          targets = clip.get("segmentation_targets") if modality == "segmentation" else None
          prompt_lengths.append(text.token_length(prompts.modality_prompt(modality, targets)))
  return {"caption": _distribution(captions, caption_len),
          "prompt": _distribution(prompt_lengths, prompt_len)}


def format_text_lengths(lengths: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """Text lines for `text_lengths` (a warning line per kind with truncated texts)."""
  lines = []
  for kind, key in (("caption", "caption_len"), ("prompt", "prompt_len")):
    s = lengths[kind]
    if not s["count"]:
      lines.append(f"{kind} tokens: none")
      continue
    lines.append(f"{kind} tokens: min {s['min']} median {s['median']:g} max {s['max']} over "
                 f"{s['count']}; {s['truncated']} longer than data.{key}={s['max_len']}")
    if s["truncated"]:
      lines.append(f"warning: {s['truncated']} {kind}s are truncated to data.{key}="
                   f"{s['max_len']} tokens; raise it to >= {s['max']} (and model.text_max_len)")
  return lines


def contact_sheet(batch: Mapping[str, np.ndarray], *, rows: int = SHEET_ROWS,
                  frames: int = SHEET_FRAMES) -> Image.Image:
  """A PIL image: per clip a label line, then `frames` RGB frames | the same modality frames."""
  count = min(rows, len(batch["rgb"]))
  num_frames, height, width = batch["rgb"].shape[1:4]
  picks = np.unique(np.linspace(0, num_frames - 1, min(frames, num_frames)).round().astype(int))
  scale = max(1, -(-SHEET_MIN_FRAME_HEIGHT // height))
  cell_h, cell_w = height * scale, width * scale
  row_w = 2 * len(picks) * cell_w + _GAP
  sheet = Image.new("RGB", (row_w, count * (cell_h + _LABEL_HEIGHT)), (32, 32, 32))
  draw = ImageDraw.Draw(sheet)
  for row in range(count):
    top = row * (cell_h + _LABEL_HEIGHT)
    modality = int(batch["modality_id"][row])
    label = " | ".join((constants.SOURCES[int(batch["source_id"][row])],
                        constants.MODALITIES[modality] if modality >= 0 else "none (RGB only)",
                        constants.TASKS[int(batch["task_id"][row])] if modality >= 0
                        else constants.T2V))
    draw.text((2, top + 1), label, fill=(255, 255, 255))
    for column, frame in enumerate(picks):
      for stream, key in enumerate(("rgb", "modality_video")):
        image = Image.fromarray(batch[key][row, frame]).resize((cell_w, cell_h), Image.NEAREST)
        left = stream * (len(picks) * cell_w + _GAP) + column * cell_w
        sheet.paste(image, (left, top + _LABEL_HEIGHT))
  return sheet


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="unity-data inspect",
      description="Per-batch source/modality/task counts of the training pipeline.")
  parser.add_argument("--data", required=True, help="OpenUni data directory")
  parser.add_argument("--config", required=True, help="configs/NAME.py[:ARGS]")
  parser.add_argument("--stage", type=int, default=0, help="curriculum stage index (default 0)")
  parser.add_argument("--batches", type=int, default=4, help="batches to read (default 4)")
  parser.add_argument("--split", default="train")
  parser.add_argument("--workers", type=int, default=None,
                      help="override config.data.worker_count (0 = decode in this process)")
  parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
  parser.add_argument("--sheet", default=None, help="write a contact sheet PNG of batch 0")
  parser.add_argument("--precomputed", default=None, metavar="DIR|URL",
                      help="read batches as training on `unity-data precompute` output does "
                      "(sets config.data.precomputed; same per-batch counts, no --sheet)")
  return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
  """Runs `unity-data inspect` with `argv` (without the program/subcommand names).

  Returns the exit status: 0, or 2 with a one-line message on stderr for bad arguments, a bad
  config or bad data.
  """
  args = _parser().parse_args(argv)
  if args.batches < 1:
    _parser().error(f"--batches must be >= 1, got {args.batches}")
  try:
    return _run(args, out or sys.stdout)
  except (ValueError, OSError) as error:  # ConfigError, RecordError, missing files, ...
    print(f"unity-data inspect: error: {error}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace, out: TextIO) -> int:
  config = config_lib.load_config(args.config)
  config.data.dir = args.data
  if args.workers is not None:
    config.data.worker_count = args.workers
  if args.precomputed is not None:
    config.data.precomputed = args.precomputed
  if config.data.precomputed and args.sheet:
    # Declared, not silently skipped: precomputed batches hold latents, not viewable frames.
    raise ValueError("--sheet shows decoded videos; precomputed batches hold latents (drop "
                     "--sheet, or inspect without data.precomputed)")
  plan = sampling.plan_from_config(config, args.stage)
  counts = sampling.per_batch_counts(plan, int(config.train.batch_size), 1)
  if not args.json:
    print(f"stage {args.stage} {plan.name!r}, split {args.split!r}: batch "
          f"{config.train.batch_size} = " + " + ".join(f"{n} {s}" for s, n in counts.items()),
          file=out)
  from unity_jax.data import reader as reader_lib  # pylint: disable=g-import-not-at-top
  data = reader_lib.OpenUniReader(args.data)
  if args.split in data.splits:  # (A missing split is reported by make_train_iterator.)
    pipeline.check_geometry(data, config, args.split, config_spec=args.config)
  iterator = pipeline.make_train_iterator(config, args.stage, split=args.split)
  first_batch = []

  def batches():
    for index in range(args.batches):
      batch = next(iterator)
      if index == 0:
        first_batch.append(batch)
      yield batch

  try:
    report(batches(), as_json=args.json, out=out)
    state = iterator.get_state()
  finally:
    iterator.close()
  lengths = text_lengths(data, args.split, int(config.data.caption_len),
                         int(config.data.prompt_len))
  if args.json:
    print(json.dumps({"skipped_corrupt": state["skipped_corrupt"]}), file=out)
    print(json.dumps({"text_lengths": lengths, "truncated_in_batches": {
        "captions": state["truncated_captions"], "prompts": state["truncated_prompts"]}}),
          file=out)
  else:
    print(f"skipped corrupt records: {state['skipped_corrupt']}", file=out)
    print(f"truncated in these batches: {state['truncated_captions']} captions, "
          f"{state['truncated_prompts']} prompts", file=out)
    for line in format_text_lengths(lengths):
      print(line, file=out)
  if args.json:  # Keep stdout JSON; the table output holds its warning lines.
    for line in format_text_lengths(lengths):
      if line.startswith("warning: "):
        print(f"unity-data inspect: {line}", file=sys.stderr)
  if args.sheet:
    contact_sheet(first_batch[0]).save(args.sheet)
    if not args.json:
      print(f"contact sheet: {args.sheet}", file=out)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
