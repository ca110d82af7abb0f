"""Curriculum stages on the global step axis, and stage transitions of the train state.

Stages run back to back: stage i owns global steps [start_i, start_i + stages[i].steps). The
state records the stage it is in; before running step s the trainer calls `enter_stage` when
`stage_of(s)` differs, which sets the stage and (unless train.carry_optimizer_across_stages)
resets the optimizer state. Because the transition is a pure function of (state, config), a
run resumed from a checkpoint taken at a stage boundary makes the same transition.
"""

import bisect

import jax.numpy as jnp
import numpy as np


def stage_starts(config) -> list[int]:
  """Global step at which each stage begins."""
  return [int(x) for x in np.concatenate([[0], np.cumsum([s.steps for s in config.stages])])
          [:-1]]


def total_steps(config) -> int:
  """Steps of the whole curriculum."""
  return int(sum(s.steps for s in config.stages))


def stage_of(config, step: int) -> int:
  """The stage that global step `step` (0-based, about to run) belongs to; the last stage for
  step >= total_steps."""
  return min(bisect.bisect_right(stage_starts(config), step) - 1, len(config.stages) - 1)


def stage_end(config, stage: int) -> int:
  """First global step after `stage`."""
  return stage_starts(config)[stage] + int(config.stages[stage].steps)


def is_stage_end(config, steps_done: int) -> bool:
  """True when `steps_done` steps complete a stage (checkpoints are always written there)."""
  return any(steps_done == stage_end(config, i) for i in range(len(config.stages)))


def enter_stage(config, state, stage: int, reset_optimizer):
  """The state moved into `stage`; `reset_optimizer(state) -> state` runs unless the optimizer
  state carries over (train.carry_optimizer_across_stages). Traceable (jit it with the state
  shardings and a static `stage`)."""
  if not config.train.carry_optimizer_across_stages:
    state = reset_optimizer(state)
  return state.replace(stage=jnp.asarray(stage, jnp.int32))


def describe(config) -> str:
  """One line per stage: name, global step range, sources, modalities, task probabilities."""
  lines = []
  for i, (s, start) in enumerate(zip(config.stages, stage_starts(config))):
    tasks = ", ".join(f"{k}={v:g}" for k, v in dict(s.task_probs).items())
    lines.append(f"stage {i} {s.name}: steps [{start}, {start + s.steps}) sources="
                 f"{','.join(s.sources)} modalities={','.join(s.modalities)} tasks: {tasks}")
  return "\n".join(lines)
