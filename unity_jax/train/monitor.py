"""Run reporting: metrics.jsonl, TensorBoard events, a progress line and log messages.

Only process 0 writes (pass `enabled=False` elsewhere). Every step's metrics are accumulated;
every `train.log_every` steps, at stage ends and at the end, the window means go to
metrics.jsonl ({"step", "stage", "stage_name", "steps_per_sec", "time", metric: mean, ...})
and TensorBoard. On a terminal a progress line (step, stage, loss, it/s, ETA) is redrawn every
step; otherwise a plain line is printed per logged window.
"""

import json
import math
import os
import sys
import time

import numpy as np


def _record_step(line: str) -> float:
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return float("inf")   # a line cut off by a kill: drop it


def format_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return str(n)


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Monitor:
  """Writes run metrics and messages for one training run (see the module docstring)."""

  def __init__(self, workdir: str, *, total_steps: int, stage_names, log_every: int,
               enabled: bool = True, stream=None):
    self._enabled = enabled
    self._total = total_steps
    self._stage_names = list(stage_names)
    self._log_every = log_every
    self._stream = stream or sys.stderr
    self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
    self._window: dict[str, list[float]] = {}
    self._window_start = time.perf_counter()
    self._window_steps = 0
    self._run_start = None
    self._run_start_step = 0
    self._jsonl = None
    self._tensorboard = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops metrics.jsonl records past `step` (written by a run that died after its last
    checkpoint), so a resumed run's records continue without duplicates."""
    if not self._enabled:
      return
    self._jsonl.flush()
    path = self._jsonl.name
    with open(path, encoding="utf-8") as f:
      lines = f.readlines()
    kept = [line for line in lines if _record_step(line) <= step]
    if len(kept) != len(lines):
      self._jsonl.close()
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
      os.replace(path + ".tmp", path)
      self._jsonl = open(path, "a", encoding="utf-8")

  def info(self, message: str) -> None:
    """A log message (ends any progress line first)."""
    if not self._enabled:
      return
    if self._tty:
      self._stream.write("\r\033[K")
    self._stream.write(message.rstrip("\n") + "\n")
    self._stream.flush()

  def start(self, step: int) -> None:
    """Marks the start of training at global `step` (for it/s and ETA)."""
    self._run_start, self._run_start_step = time.perf_counter(), step
    self._window_start, self._window_steps = time.perf_counter(), 0

  def record(self, step: int, stage: int, metrics: dict, *, force_flush: bool = False) -> None:
    """Adds one step's host metrics; `step` counts completed steps."""
    for key, value in metrics.items():
      self._window.setdefault(key, []).append(float(value))
    self._window_steps += 1
    if not self._enabled:
      self._window.clear()
      return
    if self._tty:
      self._progress(step, stage, float(metrics.get("loss", float("nan"))))
    if force_flush or step % self._log_every == 0 or step == self._total:
      self._flush(step, stage)

  def _rate(self, step: int) -> float:
    elapsed = time.perf_counter() - (self._run_start or time.perf_counter())
    done = step - self._run_start_step
    return done / elapsed if elapsed > 0 and done > 0 else float("nan")

  def _progress(self, step: int, stage: int, loss: float) -> None:
    rate = self._rate(step)
    width = 24
    filled = int(width * step / max(self._total, 1))
    bar = "#" * filled + "." * (width - filled)
    eta = (self._total - step) / rate if rate == rate and rate > 0 else float("nan")
    self._stream.write(f"\r\033[K[{bar}] step {step}/{self._total} stage {stage} "
                       f"({self._stage_names[stage]}) loss {loss:.4f} {rate:.2f} it/s "
                       f"ETA {format_duration(eta)}")
    self._stream.flush()

  def _flush(self, step: int, stage: int) -> None:
    if not self._window:
      return
    elapsed = time.perf_counter() - self._window_start
    record = {"step": step, "stage": stage, "stage_name": self._stage_names[stage],
              "steps_per_sec": self._window_steps / elapsed if elapsed > 0 else None,
              "time": time.time()}
    for key, values in sorted(self._window.items()):
      counts = self._window.get("count/" + key[len("loss/"):]) if key.startswith("loss/") else None
      # Per-task / per-modality losses are means over the samples that had them.
      mean = (float(np.dot(values, counts) / max(np.sum(counts), 1.0)) if counts is not None
              else float(np.mean(values)))
      record[key] = mean if math.isfinite(mean) else str(mean)
      if math.isfinite(mean):   # non-finite steps are reported by the trainer's messages
        self._tensorboard.add_scalar(key, mean, step)
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._tensorboard.flush()
    if not self._tty:
      loss = record.get("loss", float("nan"))
      rate = self._rate(step)
      eta = (self._total - step) / rate if rate == rate and rate > 0 else float("nan")
      self._stream.write(f"step {step}/{self._total} stage {stage} ({self._stage_names[stage]}) "
                         f"loss {float(loss):.4f} grad_norm "
                         f"{float(record.get('grad_norm', float('nan'))):.3f} lr "
                         f"{float(record.get('lr', float('nan'))):.3g} {rate:.2f} it/s ETA "
                         f"{format_duration(eta)}\n")
      self._stream.flush()
    self._window.clear()
    self._window_start, self._window_steps = time.perf_counter(), 0

  def close(self, step: int | None = None, stage: int | None = None) -> None:
    if step is not None and stage is not None:
      self._flush(step, stage)
    if self._tty and self._enabled:
      self._stream.write("\n")
    if self._jsonl:
      self._jsonl.close()
      self._jsonl = None
    if self._tensorboard:
      self._tensorboard.close()
      self._tensorboard = None
