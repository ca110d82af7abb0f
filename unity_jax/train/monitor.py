"""Run reporting: metrics.jsonl, TensorBoard events, a progress line and log messages.

Only process 0 writes (pass `enabled=False` elsewhere). Every step's metrics are accumulated;
every `train.log_every` steps, at stage ends and at the end, the window means go to
metrics.jsonl ({"step", "stage", "stage_name", "steps_per_sec", "time", "skipped_steps",
metric: mean, ...}) and TensorBoard. Means are NaN-aware: a step skipped for a non-finite loss or
gradient (train.nonfinite_policy="skip") is left out of them and counted in "skipped_steps"; a
metric without one finite value in the window is `null` (JSON has no NaN), never a string.
TensorBoard reopens with purge_step after a resume, so steps a killed run logged past its last
checkpoint are replaced, not duplicated. On a terminal a progress line (step, stage, loss, it/s, ETA) is redrawn every
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


def _finite_mean(values, counts=None) -> float | None:
  """Mean of the finite `values` (weighted by `counts` when given, e.g. per-task sample counts);
  None when there is none. NaN-aware: one skipped step does not poison a whole window."""
  values = np.asarray(values, np.float64)
  keep = np.isfinite(values)
  if counts is not None:
    weights = np.asarray(counts, np.float64)
    keep &= np.isfinite(weights)
    if not keep.any():
      return None
    # Per-task / per-modality losses are means over the samples that had them.
    return float(np.dot(values[keep], weights[keep]) / max(np.sum(weights[keep]), 1.0))
  return float(np.mean(values[keep])) if keep.any() else None


def _or_nan(value) -> float:
  return float("nan") if value is None else float(value)


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
    self._window_skipped = 0
    self._workdir = workdir
    self._window_start = time.perf_counter()
    self._window_steps = 0
    self._run_start = None
    self._run_start_step = 0
    self._jsonl = None
    self._tensorboard = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def _open_tensorboard(self, purge_step: int | None = None):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    # Event files are named by the second they are opened in; the nanosecond suffix keeps a
    # writer reopened within that second from overwriting the last one, and the name order
    # (which TensorBoard reads in) the write order.
    return SummaryWriter(os.path.join(self._workdir, "tensorboard"), purge_step=purge_step,
                         filename_suffix=f".{time.time_ns()}")

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
    # Events of steps > `step` hide behind a purge marker (TensorBoard drops them on load).
    if self._tensorboard is not None:
      self._tensorboard.close()
    self._tensorboard = self._open_tensorboard(purge_step=step + 1)
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
    if metrics.get("nonfinite") or not math.isfinite(float(metrics.get("loss", 0.0))):
      self._window_skipped += 1
    if not self._enabled:
      self._window.clear()
      self._window_skipped = 0
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
              "time": time.time(), "skipped_steps": self._window_skipped}
    if self._tensorboard is None:   # opened on first use (or by truncate_after with a purge)
      self._tensorboard = self._open_tensorboard()
    self._tensorboard.add_scalar("skipped_steps", self._window_skipped, step)
    for key, values in sorted(self._window.items()):
      counts = self._window.get("count/" + key[len("loss/"):]) if key.startswith("loss/") else None
      mean = _finite_mean(values, counts)
      record[key] = mean   # None when no step of the window had a finite value
      if mean is not None:
        self._tensorboard.add_scalar(key, mean, step)
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._tensorboard.flush()
    if not self._tty:
      loss = _or_nan(record.get("loss"))
      rate = self._rate(step)
      eta = (self._total - step) / rate if rate == rate and rate > 0 else float("nan")
      self._stream.write(f"step {step}/{self._total} stage {stage} ({self._stage_names[stage]}) "
                         f"loss {loss:.4f} grad_norm "
                         f"{_or_nan(record.get('grad_norm')):.3f} lr "
                         f"{_or_nan(record.get('lr')):.3g} {rate:.2f} it/s ETA "
                         f"{format_duration(eta)}"
                         + (f" ({self._window_skipped} skipped)" if self._window_skipped else "")
                         + "\n")
      self._stream.flush()
    self._window.clear()
    self._window_start, self._window_steps = time.perf_counter(), 0
    self._window_skipped = 0

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
