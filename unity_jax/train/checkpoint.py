"""Orbax checkpoints of the train state, the data-iterator position and the config.

Layout: <workdir>/checkpoints/<step>/{state, meta, config[, data]} written by an async
CheckpointManager (keeps train.keep_checkpoints). A checkpoint becomes visible only when
complete (orbax writes to a temporary directory and renames), so a SIGKILL during a save leaves
the previous checkpoint as the latest. `meta` holds {step, stage, data_source}; `data` (grain
iterator state, OpenUni source only) belongs to stage `meta.stage` and is restored only when
training continues in that stage. Restoring onto another mesh: pass an abstract state whose
ShapeDtypeStructs carry the new shardings (state.abstract_state on the new mesh).
"""

import json
import os

import jax
import orbax.checkpoint as ocp

from unity_jax.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


class Checkpointer:
  """Saves and restores {state, meta, config, data} checkpoints under one directory."""

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    self.directory = directory
    self._manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, *, config_json: dict, data_args=None) -> bool:
    """Starts an (async) save of `state` at its step; False when that step is already saved.

    Returns after the device-to-host copy, so the caller may donate `state` right away.
    """
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return False
    meta = {"step": step, "stage": int(jax.device_get(state.stage)),
            "data": data_args is not None}
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                 config=ocp.args.JsonSave(config_json))
    if data_args is not None:
      items["data"] = data_args
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def read_meta(self, step: int) -> dict:
    return dict(self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])

  def read_config(self, step: int) -> dict:
    return dict(self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"])

  def restore(self, step: int, abstract: TrainState, *, data_args=None) -> TrainState:
    """The state at `step` placed per `abstract`'s shardings; restores the data iterator in
    place when `data_args` (grain CheckpointRestore) is given and the checkpoint has one."""
    items = dict(state=ocp.args.StandardRestore(abstract))
    if data_args is not None:
      if not self.read_meta(step)["data"]:
        raise ValueError(f"checkpoint {self.directory}/{step} has no data-iterator state "
                         "(saved with train.data_source='random'?)")
      items["data"] = data_args
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def restore_params(self, step: int, abstract_params, field: str = "ema_params"):
    """Only `field` ("params" or "ema_params") of the state at `step`, placed per the shardings
    of `abstract_params` (a tree of ShapeDtypeStructs): reads a third of a full restore (no
    optimizer moments, no second copy of the weights). Use a Checkpointer that has not
    restored full states (orbax binds one handler per item)."""
    if field not in ("params", "ema_params"):
      raise ValueError(f"field={field!r}; expected 'params' or 'ema_params'")
    item = {field: abstract_params}
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return restored["state"][field]

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def read_workdir_config(workdir: str) -> dict:
  """The config.json the trainer wrote into `workdir`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a unity-train workdir?")
  with open(path) as f:
    return json.load(f)
