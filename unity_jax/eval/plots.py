"""Loss curves of a training run as PNG line plots, drawn with PIL (no matplotlib dependency).

  curves = write_loss_curves("runs/tiny/metrics.jsonl", "report_files")
  # [{"name": "loss_task_control", "title": ..., "path": "report_files/loss_task_control.png"}]

metrics.jsonl (train/monitor.py) holds one record per log interval with "step", "stage",
"loss", "loss/rgb", "loss/task/<task>" (constants.LOSS_TASKS: control, estimate, joint and t2v
for RGB-only samples), "loss/modality/<m>" and matching "count/..." keys (how
many samples of the interval had that task or modality). A point whose count is 0 is left out:
its loss is a placeholder 0, not a measurement (e.g. skeleton in curriculum stage 1). A value
that is `null` (every step of the interval was skipped as non-finite; older logs wrote "nan") is
a gap: the line breaks there instead of bridging it.
"""

import json
import math
import os

from PIL import Image, ImageDraw, ImageFont

from unity_jax import constants
from unity_jax import io_utils

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194))
"""Line colours (matplotlib's tab10 order, so plots look familiar)."""
REFERENCE_GREY = (170, 170, 170)


def read_metrics(path: str) -> list[dict]:
  """Records of a metrics.jsonl file in step order; a truncated last line is skipped."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: no training metrics to plot (the trainer "
                            "writes metrics.jsonl into its workdir)")
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # A run killed mid-write leaves a partial line.
  # A resumed run appends again from its checkpoint: keep the last record of each step.
  by_step = {int(r["step"]): r for r in records if "step" in r}
  return [by_step[s] for s in sorted(by_step)]


def _finite(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def series(records: list[dict], key: str, count_key: str | None = None,
           keep_gaps: bool = False):
  """(steps, values) of `key`, leaving out records without it or whose `count_key` is 0.

  A record holding `key` with no finite value (null, or "nan" from older logs) is left out too,
  or with `keep_gaps` gives a None value, so a plot breaks its line there.
  """
  steps, values = [], []
  for r in records:
    value = r.get(key)
    count = r.get(count_key, 0) if count_key is not None else 1
    if key not in r or not (_finite(count) and count > 0):
      continue
    if not _finite(value):
      if keep_gaps:
        steps.append(r["step"])
        values.append(None)
      continue
    steps.append(r["step"])
    values.append(value)
  return steps, values


def stage_starts(records: list[dict]) -> list[tuple[int, str]]:
  """(first logged step, stage name) of every stage after the first."""
  starts, previous = [], None
  for r in records:
    if previous is not None and r.get("stage") != previous:
      starts.append((r["step"], str(r.get("stage_name", r.get("stage")))))
    previous = r.get("stage")
  return starts


def nice_ticks(low: float, high: float, target: int = 5) -> list[float]:
  """About `target` round tick values (1, 2, 5 x 10^k steps) from <= low to >= high."""
  if high <= low:
    high = low + (abs(low) or 1.0)
  raw = (high - low) / target
  magnitude = 10 ** math.floor(math.log10(raw))
  step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
  first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
  return [round(i * step, 12) for i in range(first, last + 1)]


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


def line_plot(lines: list[tuple[str, list, list, tuple]], *, title: str, xlabel: str = "step",
              ylabel: str = "loss", markers: list[tuple[int, str]] = (), width: int = 640,
              height: int = 360) -> Image.Image:
  """A line chart with axes, round ticks, a legend and dashed vertical markers.

  Args:
    lines: (label, xs, ys, rgb colour) per line; lines without points are listed as "no data";
      a None in ys is a gap (the line is drawn in pieces around it).
    markers: (x, label) dashed vertical lines, e.g. curriculum stage starts.

  Returns:
    an RGB PIL image of width x height pixels.
  """
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  font, small = _font(14), _font(11)
  left, right, top, bottom = 60, width - 16, 30, height - 42
  draw.text((width // 2, 6), title, fill="black", font=font, anchor="ma")
  xs = [x for _, px, py, _ in lines for x, y in zip(px, py) if y is not None] or [0, 1]
  ys = [y for _, _, py, _ in lines for y in py if y is not None] or [0, 1]
  x_ticks = nice_ticks(min(0, min(xs)), max(xs))
  y_ticks = nice_ticks(min(ys), max(ys), target=6)
  x_low, x_high = x_ticks[0], x_ticks[-1]
  y_low, y_high = y_ticks[0], y_ticks[-1]
  to_x = lambda x: left + (x - x_low) / max(x_high - x_low, 1e-12) * (right - left)  # noqa
  to_y = lambda y: bottom - (y - y_low) / max(y_high - y_low, 1e-12) * (bottom - top)  # noqa
  for tick in y_ticks:
    y = to_y(tick)
    draw.line([(left, y), (right, y)], fill=(235, 235, 235))
    draw.text((left - 6, y), f"{tick:g}", fill="black", font=small, anchor="rm")
  for tick in x_ticks:
    x = to_x(tick)
    draw.line([(x, bottom), (x, bottom + 4)], fill="black")
    draw.text((x, bottom + 6), f"{tick:g}", fill="black", font=small, anchor="ma")
  draw.rectangle([left, top, right, bottom], outline="black")
  draw.text(((left + right) // 2, height - 16), xlabel, fill="black", font=small, anchor="ma")
  draw.text((6, top - 14), ylabel, fill="black", font=small)
  for x, label in markers:
    px = to_x(x)
    for y in range(top, bottom, 8):
      draw.line([(px, y), (px, min(y + 4, bottom))], fill=(120, 120, 120))
    draw.text((px + 3, top + 3), label, fill=(90, 90, 90), font=small)
  for label, px, py, colour in lines:
    pieces, points = [], []
    for x, y in zip(px, py):
      if y is None:   # a gap: end the current piece
        pieces.append(points)
        points = []
      else:
        points.append((to_x(x), to_y(y)))
    for points in pieces + [points]:
      if len(points) > 1:
        draw.line(points, fill=colour, width=2, joint="curve")
      elif points:
        x, y = points[0]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
  legend_y = top + 18
  for label, _, py, colour in lines:
    has_data = any(y is not None for y in py)
    draw.line([(right - 150, legend_y + 6), (right - 132, legend_y + 6)], fill=colour, width=3)
    draw.text((right - 128, legend_y), label if has_data else f"{label} (no data)",
              fill="black", font=small)
    legend_y += 15
  return image


def loss_figures(records: list[dict]) -> list[dict]:
  """Figure specs: total loss, one per task (control, estimate, joint, t2v), one per modality
  set."""
  markers = stage_starts(records)
  total = series(records, "loss", keep_gaps=True)
  figures = [dict(name="loss_total", title="Training loss (all tasks)",
                  lines=[("total", *total, PALETTE[0]),
                         ("rgb tokens", *series(records, "loss/rgb", "count/rgb", True),
                          PALETTE[1])])]
  for i, task in enumerate(constants.LOSS_TASKS):
    figures.append(dict(
        name=f"loss_task_{task}", title=f"Loss of the {task} task",
        lines=[(task, *series(records, f"loss/task/{task}", f"count/task/{task}", True),
                PALETTE[i + 2]), ("total", *total, REFERENCE_GREY)]))
  figures.append(dict(
      name="loss_modalities", title="Loss per modality (modality tokens)",
      lines=[(m, *series(records, f"loss/modality/{m}", f"count/modality/{m}", True),
              PALETTE[i])
             for i, m in enumerate(constants.MODALITIES)]))
  for figure in figures:
    figure["markers"] = markers
  return figures


def write_loss_curves(metrics_path: str, out_dir: str) -> list[dict]:
  """Writes one PNG per loss figure into `out_dir`; returns [{"name", "title", "path"}]."""
  records = read_metrics(metrics_path)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for figure in loss_figures(records):
    path = os.path.join(out_dir, figure["name"] + ".png")
    image = line_plot(figure["lines"], title=figure["title"], markers=figure["markers"])
    with io_utils.atomic_path(path) as tmp:
      image.save(tmp, format="PNG")
    written.append(dict(name=figure["name"], title=figure["title"], path=path))
  return written
