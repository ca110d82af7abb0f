"""The training loop around the pure step: compile, restore, iterate stages, checkpoint, report.

  trainer = Trainer(config, workdir)   # validates, builds mesh, model, optimizer, shardings
  result = trainer.run()               # AOT compile (memory + FLOPs logged), auto-resume, loop

Reproducibility contract: everything random derives from config.seed and the step, the data
position is in the checkpoint, and the loop's decisions (stage transitions, saves) depend only
on the step. A run killed at any point (even SIGKILL) and re-run with the same command ends with
the same params_sha256 / ema_sha256 as an uninterrupted run. SIGTERM / SIGINT: the current step
finishes, a checkpoint is written, run() returns status "interrupted" (the CLI exits 0).
"""

import dataclasses
import functools
import json
import os
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from unity_jax import config as config_lib
from unity_jax import io_utils
from unity_jax import model as model_lib
from unity_jax.model import codec as codec_lib
from unity_jax.parallel import mesh as mesh_lib
from unity_jax.train import checkpoint as checkpoint_lib
from unity_jax.train import curriculum
from unity_jax.train import export
from unity_jax.train import monitor as monitor_lib
from unity_jax.train import optim
from unity_jax.train import sources
from unity_jax.train import state as state_lib
from unity_jax.train import step as step_lib

EXIT_NONFINITE = 3
"""Exit status of unity-train when the non-finite policy stops the run."""


class NonFiniteError(RuntimeError):
  """The run stopped under train.nonfinite_policy='stop'; the message says what to do."""


@dataclasses.dataclass
class RunResult:
  status: str            # "completed" or "interrupted" (signal)
  step: int              # steps done
  stage: int
  summary: dict | None   # summary.json contents when completed


class _StopSignals:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Trainer:
  """One training run of `config` in `workdir` (see the module docstring)."""

  def __init__(self, config, workdir: str, *, devices=None, stream=None):
    devices = jax.devices() if devices is None else devices
    config_lib.validate(config, len(devices))
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.mesh = mesh_lib.make_mesh(config, devices)
    self.process_index, self.process_count = jax.process_index(), jax.process_count()
    self.is_chief = self.process_index == 0
    self.total_steps = curriculum.total_steps(config)
    self.monitor = monitor_lib.Monitor(
        self.workdir, total_steps=self.total_steps, stage_names=[s.name for s in config.stages],
        log_every=int(config.train.log_every), enabled=self.is_chief, stream=stream)
    abstract_params = state_lib.abstract_params(config)
    self.optimizer = optim.make_optimizer(config, abstract_params)
    multipliers = optim.lr_multipliers(config, abstract_params)
    self.abstract_state, self.state_shardings = state_lib.abstract_state(
        config, self.mesh, self.optimizer)
    self.codec = codec_lib.training_codec(config)
    from unity_jax.data import latent_examples  # pylint: disable=g-import-not-at-top
    self.train_step = step_lib.make_train_step(
        config, model_lib.build_model(config), self.optimizer, multipliers,
        empty_caption=latent_examples.empty_caption(config))
    self._enter_stage = jax.jit(
        functools.partial(curriculum.enter_stage, config,
                          reset_optimizer=functools.partial(state_lib.reset_optimizer,
                                                            optimizer=self.optimizer)),
        static_argnums=1, out_shardings=self.state_shardings, donate_argnums=0)
    self.checkpointer = checkpoint_lib.Checkpointer(
        checkpoint_lib.checkpoint_dir(self.workdir), keep=int(config.train.keep_checkpoints))

  # --- set-up -------------------------------------------------------------------------------

  def compile(self):
    """AOT-compiles the step and logs per-device memory and FLOPs (before any data loads)."""
    jitted = step_lib.jit_train_step(self.train_step, self.state_shardings, self.mesh)
    self._batch_abstract = step_lib.abstract_batch(
        sources.batch_shapes(self.config, int(self.config.train.batch_size)), self.mesh)
    compiled, report = step_lib.compile_train_step(jitted, self.abstract_state,
                                                   self._batch_abstract, self.codec, self.mesh)
    state_bytes = state_lib.state_bytes_per_device(self.abstract_state)
    fmt = monitor_lib.format_bytes
    scan_note = ", which counts a scanned layer once" if self.config.model.scan_layers else ""
    self.monitor.info(
        f"compiled train step on mesh {dict(self.mesh.shape)}: "
        f"{report['flops'] / 1e9:.3f} GFLOP/step per device (XLA cost analysis{scan_note}); "
        f"per-device memory: arguments {fmt(report.get('argument_size_in_bytes', 0))}, "
        f"outputs {fmt(report.get('output_size_in_bytes', 0))}, temporaries "
        f"{fmt(report.get('temp_size_in_bytes', 0))}; state per device: params "
        f"{fmt(state_bytes['params'])}, optimizer {fmt(state_bytes['opt_state'])}, ema "
        f"{fmt(state_bytes['ema_params'])} (unsharded total {fmt(state_bytes['total'])})")
    self.compile_report = {**report, "state_bytes": state_bytes}
    return compiled

  def _write_config(self):
    path = os.path.join(self.workdir, "config.json")
    new = json.loads(self.config.to_json_best_effort())
    if os.path.isfile(path):
      with open(path) as f:
        old = json.load(f)
      old, new_flat = _flatten(old), _flatten(new)
      changed = sorted(k for k in old.keys() | new_flat.keys() if old.get(k) != new_flat.get(k))
      if changed:
        self.monitor.info(f"note: config differs from the previous run in {self.workdir}: "
                          f"{changed}")
    io_utils.atomic_write_json(path, new)

  def _make_source(self, stage: int):
    return sources.make_source(self.config, stage, process_index=self.process_index,
                               process_count=self.process_count)

  def restore_or_init(self):
    """(state, source, stage of the source): the latest checkpoint, or a fresh state."""
    latest = self.checkpointer.latest_step()
    if latest is None:
      state = state_lib.create_state(self.config, self.mesh, self.optimizer,
                                     self.state_shardings, self._pretrained_params())
      return state, self._make_source(0), 0
    meta = self.checkpointer.read_meta(latest)
    stage = curriculum.stage_of(self.config, latest)
    source = self._make_source(stage)
    # Iterator state belongs to meta["stage"]; a checkpoint at a stage end starts the next
    # stage's data from its beginning.
    data_args = source.restore_args() if meta["stage"] == stage and meta["data"] else None
    state = self.checkpointer.restore(latest, self.abstract_state, data_args=data_args)
    self.monitor.info(f"resumed from {self.checkpointer.directory}/{latest} (stage "
                      f"{meta['stage']})")
    return state, source, stage

  def _pretrained_params(self):
    """config.init.transformer's weights on the params' shardings (RGB path imported, the
    UnityVideo extension initialised from it; docs/wan.md), or None for random weights."""
    directory = self.config.init.transformer
    if not directory:
      return None
    from unity_jax import wan  # pylint: disable=g-import-not-at-top
    params = wan.load_transformer(directory, self.config, mesh=self.mesh,
                                  rng=state_lib.init_keys(self.config)[0])
    self.monitor.info(f"initialised from the Wan transformer in {directory}")
    return params

  def _global_batch(self, local: dict) -> dict:
    expected = self._batch_abstract
    if set(local) != set(expected):
      raise ValueError(f"batch keys {sorted(local)} differ from the compiled step's "
                       f"{sorted(expected)}")
    sharding = mesh_lib.batch_sharding(self.mesh)
    out = {}
    for key, value in local.items():
      array = jax.make_array_from_process_local_data(sharding, np.asarray(value))
      if array.shape != expected[key].shape or array.dtype != expected[key].dtype:
        raise ValueError(f"batch[{key!r}] is {array.dtype}{list(array.shape)} but the step was "
                         f"compiled for {expected[key].dtype}{list(expected[key].shape)}")
      out[key] = array
    return out

  def _save(self, state, source):
    self.checkpointer.save(state, config_json=json.loads(self.config.to_json_best_effort()),
                           data_args=source.checkpoint_args())

  def _stop_requested(self, signals: _StopSignals) -> str | None:
    flag = signals.received is not None
    if self.process_count > 1:   # every process must agree to stop at the same step
      flag = bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
    return (signals.received or "signal on another process") if flag else None

  # --- the loop -----------------------------------------------------------------------------

  def run(self) -> RunResult:
    """Trains to the end of the curriculum (or until a stop signal); see the module docstring."""
    if self.is_chief:
      os.makedirs(self.workdir, exist_ok=True)
      self._write_config()
    self.monitor.info(curriculum.describe(self.config))
    self._source = None
    # Installed before compiling: a signal during set-up stops after the first step.
    with _StopSignals() as signals:
      try:
        compiled = self.compile()
        state, self._source, source_stage = self.restore_or_init()
        return self._loop(compiled, state, source_stage, signals)
      finally:
        if self._source is not None:
          self._source.close()
        self.checkpointer.close()
        self.monitor.close()

  def _loop(self, compiled, state, source_stage: int, signals: _StopSignals) -> RunResult:
    c = self.config
    step, stage = int(jax.device_get(state.step)), int(jax.device_get(state.stage))
    self.monitor.truncate_after(step)
    self.monitor.start(step)
    while step < self.total_steps:
      target = curriculum.stage_of(c, step)
      if target != stage:
        state, stage = self._enter_stage(state, target), target
        self.monitor.info(f"step {step}: entering stage {stage} ({c.stages[stage].name})" +
                          ("" if c.train.carry_optimizer_across_stages else
                           "; optimizer state reset"))
      if target != source_stage:
        self._source.close()
        self._source, source_stage = self._make_source(target), target
      local = sources.with_debug_nan(c, self._source.next_batch(step), step)
      state, metrics = compiled(state, self._global_batch(local), self.codec)
      step += 1
      metrics = jax.device_get(metrics)
      self.monitor.record(step, stage, metrics, force_flush=curriculum.is_stage_end(c, step))
      if metrics["nonfinite"]:
        self._on_nonfinite(step, metrics)
      stop = self._stop_requested(signals)
      if stop or step % int(c.train.checkpoint_every) == 0 or curriculum.is_stage_end(c, step):
        self._save(state, self._source)
      if stop:
        self.checkpointer.wait()
        self.monitor.info(f"{stop}: stopped after step {step}; checkpoint "
                          f"{self.checkpointer.directory}/{step} written. Re-run the same "
                          "command to continue.")
        return RunResult("interrupted", step, stage, None)
    self._save(state, self._source)   # no-op when the last step was just saved
    self.checkpointer.wait()
    return RunResult("completed", step, stage, self._finish(state, step, stage))

  def _on_nonfinite(self, step: int, metrics: dict):
    policy = self.config.train.nonfinite_policy
    max_bad = int(self.config.train.max_consecutive_nonfinite)
    consecutive = int(metrics["nonfinite_consecutive"])
    self.monitor.info(
        f"step {step}: non-finite loss={float(metrics['loss'])} or grad_norm="
        f"{float(metrics['grad_norm'])}; update skipped (params, optimizer state and EMA "
        f"unchanged; {consecutive} in a row, {int(metrics['nonfinite_total'])} in total)")
    if policy == "stop" and consecutive >= max_bad:
      self.checkpointer.wait()
      latest = self.checkpointer.latest_step()
      where = (f"the last good checkpoint is {self.checkpointer.directory}/{latest}"
               if latest is not None else "no checkpoint had been written yet")
      raise NonFiniteError(
          f"stopping at step {step}: {consecutive} consecutive non-finite steps "
          f"(train.nonfinite_policy='stop', train.max_consecutive_nonfinite={max_bad}); "
          f"nothing was saved after the failure and {where}. Check the batches of steps "
          f"{step - consecutive + 1}..{step}, lower train.lr or train.grad_clip, or set "
          f"train.nonfinite_policy='skip' to skip such steps and continue.")

  def _finish(self, state, step: int, stage: int) -> dict:
    """Fingerprints, optional safetensors export and summary.json (all processes gather)."""
    params = export.to_host(state.params)
    ema = export.to_host(state.ema_params)
    summary = {"step": step, "stage": stage, "stage_name": self.config.stages[stage].name,
               "params_sha256": export.fingerprint(params),
               "ema_sha256": export.fingerprint(ema),
               "nonfinite_skipped": int(jax.device_get(state.nonfinite_total)),
               "num_params": int(sum(v.size for v in params.values())),
               "process_count": self.process_count, "mesh": dict(self.mesh.shape)}
    if self.is_chief:
      kind = self.config.train.export
      if kind != "none":
        summary["export"] = export.export_safetensors(
            ema if kind == "ema" else params, os.path.join(self.workdir, "export"), kind=kind,
            step=step)
      path = os.path.join(self.workdir, "summary.json")
      io_utils.atomic_write_json(path, summary)
      self.monitor.info(f"done: step {step}, stage {stage}; params_sha256 "
                        f"{summary['params_sha256'][:16]}…, ema_sha256 "
                        f"{summary['ema_sha256'][:16]}… ({path})")
    return summary


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix.rstrip("."): tree}


def train(config, workdir: str, **kwargs) -> RunResult:
  """Trainer(config, workdir, **kwargs).run()."""
  return Trainer(config, workdir, **kwargs).run()
