"""Optimizer: AdamW with per-parameter-group learning-rate multipliers and per-stage schedules.

AdamW here is `clip_by_global_norm -> scale_by_adam -> add_decayed_weights` (optax), followed
in the train step by `-lr(step, stage) * multiplier(leaf)`: exactly optax.adamw with a
schedule, but the learning rate is computed in the step from (step, stage) rather than from a
counter in the optimizer state, so it stays right when the optimizer state is reset or carried
across curriculum stages. Parameter groups are glob patterns over leaf paths 'a/b/c'
(`fnmatch`, where `*` also crosses '/'), e.g. ('modality_*', 10.0) gives the newly added
modality parameters 10x the base learning rate (the release's recipe).
"""

import fnmatch

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unity_jax import config as config_lib


def leaf_path(path) -> str:
  """A jax key path -> 'blocks/block/ffn/up/kernel'."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def leaf_paths(tree) -> list[str]:
  """The 'a/b/c' path of every leaf, in tree-flatten order."""
  return [leaf_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def lr_multipliers(config, params) -> dict:
  """A pytree like `params` of python floats: the first matching train.lr_multipliers entry.

  Raises ConfigError when a pattern matches no parameter (a typo would otherwise silently
  train every parameter at the base rate).
  """
  patterns = [(str(p), float(m)) for p, m in config.train.lr_multipliers]
  used = set()

  def multiplier(path, _):
    name = leaf_path(path)
    for pattern, value in patterns:
      if fnmatch.fnmatchcase(name, pattern):
        used.add(pattern)
        return value
    return 1.0

  tree = jax.tree_util.tree_map_with_path(multiplier, params)
  unused = [p for p, _ in patterns if p not in used]
  if unused:
    raise config_lib.ConfigError(
        f"config.train.lr_multipliers: pattern(s) {unused} match no parameter; parameter paths "
        f"look like {leaf_paths(params)[:4]} (glob over 'a/b/c', '*' crosses '/')")
  return tree


def weight_decay_mask(config, params) -> dict:
  """True for leaves that get weight decay (not matched by train.no_weight_decay)."""
  patterns = tuple(config.train.no_weight_decay)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(fnmatch.fnmatchcase(leaf_path(path), p) for p in patterns),
      params)


def make_optimizer(config, params) -> optax.GradientTransformation:
  """clip -> Adam moments -> decoupled weight decay; the caller applies -lr * multiplier.

  `params` may be abstract (ShapeDtypeStructs): only the tree structure and paths are used.
  """
  t = config.train
  parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
  parts.append(optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.eps))
  if t.weight_decay > 0:
    parts.append(optax.add_decayed_weights(t.weight_decay, mask=weight_decay_mask(config,
                                                                                  params)))
  return optax.chain(*parts)


def stage_schedule_table(config) -> dict[str, np.ndarray]:
  """Per-stage schedule numbers (stage overrides of train.lr etc. applied), as numpy arrays."""
  t = config.train
  rows = [{k: s.get(k, t[k]) for k in config_lib.STAGE_SCHEDULE_KEYS} for s in config.stages]
  steps = np.asarray([s.steps for s in config.stages], np.int32)
  return dict(
      start=np.concatenate([[0], np.cumsum(steps)[:-1]]).astype(np.int32), steps=steps,
      lr=np.asarray([r["lr"] for r in rows], np.float32),
      warmup=np.asarray([r["warmup_steps"] for r in rows], np.int32),
      cosine=np.asarray([r["schedule"] == "cosine" for r in rows]),
      min_ratio=np.asarray([r["min_lr_ratio"] for r in rows], np.float32))


def learning_rate(config, step, stage):
  """float32 scalar learning rate at global `step` in curriculum `stage` (traceable).

  Within each stage: linear warmup over `warmup_steps` (step 0 of the stage uses lr/warmup),
  then constant or cosine decay to lr·min_lr_ratio at the stage's last step.
  """
  table = {k: jnp.asarray(v) for k, v in stage_schedule_table(config).items()}
  at = lambda name: table[name][stage]
  local = jnp.maximum(step - at("start"), 0).astype(jnp.float32)
  warmup = at("warmup").astype(jnp.float32)
  warm = jnp.minimum(1.0, (local + 1.0) / jnp.maximum(warmup, 1.0))
  decay_steps = jnp.maximum(at("steps").astype(jnp.float32) - warmup - 1.0, 1.0)
  progress = jnp.clip((local - warmup) / decay_steps, 0.0, 1.0)
  min_ratio = at("min_ratio")
  cosine = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return at("lr") * warm * jnp.where(at("cosine"), cosine, 1.0)


def scale_updates(updates, lr, multipliers):
  """The final AdamW step direction: -lr · multiplier(leaf) · update."""
  return jax.tree.map(lambda u, m: (-lr * m) * u, updates, multipliers)
