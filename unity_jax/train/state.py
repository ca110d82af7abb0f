"""The train state pytree, its initialisation and its shardings.

TrainState holds everything a bitwise resume needs on device: fp32 master params, optimizer
state, EMA params, the step, the curriculum stage, the base RNG key and the non-finite
counters. Per-step randomness is `fold_in(rng, step)`, so the stream continues exactly after
a restore. Params, EMA and the Adam moments share the params' logical-axis shardings (FSDP /
tensor parallel per config.mesh.rules); scalars are replicated.
"""

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from unity_jax import model as model_lib
from unity_jax.parallel import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  """Attributes:
    step: int32 [] number of optimizer steps taken (including skipped non-finite ones).
    stage: int32 [] curriculum stage the state is in (see curriculum.py).
    rng: uint32 [2] raw key data of the base training key (per step: fold_in(rng, step)).
    params: fp32 master parameters (model pytree).
    opt_state: optax state of optim.make_optimizer (Adam moments fp32, like params).
    ema_params: exponential moving average of params, fp32, sharded like params.
    nonfinite_total: int32 [] steps skipped because loss or gradients were not finite.
    nonfinite_consecutive: int32 [] length of the current run of skipped steps.
  """
  step: jax.Array
  stage: jax.Array
  rng: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  nonfinite_total: jax.Array
  nonfinite_consecutive: jax.Array


def init_keys(config):
  """(params key, base training key) derived from config.seed only."""
  params_key, train_key = jax.random.split(jax.random.key(int(config.seed)))
  return params_key, train_key


def init_state(config, optimizer: optax.GradientTransformation, params=None) -> TrainState:
  """A fresh state at step 0, stage 0 (traceable: jit it with out_shardings).

  params: starting parameters (e.g. imported from a pretrained checkpoint), or None for the
  model's random initialisation from config.seed.
  """
  params_key, train_key = init_keys(config)
  if params is None:
    params = model_lib.init_params(config, params_key)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(
      step=zero, stage=zero, rng=jax.random.key_data(train_key), params=params,
      opt_state=optimizer.init(params), ema_params=jax.tree.map(jnp.copy, params),
      nonfinite_total=zero, nonfinite_consecutive=zero)


def abstract_params(config):
  """ShapeDtypeStructs of the model parameters (no allocation)."""
  return jax.eval_shape(lambda: model_lib.init_params(config, init_keys(config)[0]))


def state_shardings(config, mesh, optimizer, abstract: TrainState) -> TrainState:
  """NamedShardings for every leaf of `abstract` (a TrainState of ShapeDtypeStructs)."""
  params_sharding = mesh_lib.logical_to_sharding(model_lib.logical_param_axes(config), mesh,
                                                 config)
  replicated = NamedSharding(mesh, P())
  opt_sharding = optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract.opt_state, params_sharding,
      transform_non_params=lambda _: replicated)
  return TrainState(
      step=replicated, stage=replicated, rng=replicated, params=params_sharding,
      opt_state=opt_sharding, ema_params=params_sharding, nonfinite_total=replicated,
      nonfinite_consecutive=replicated)


def abstract_state(config, mesh, optimizer) -> tuple[TrainState, TrainState]:
  """(abstract state of ShapeDtypeStructs carrying their shardings, the shardings)."""
  shapes = jax.eval_shape(lambda: init_state(config, optimizer))
  shardings = state_shardings(config, mesh, optimizer, shapes)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return abstract, shardings


def create_state(config, mesh, optimizer, shardings: TrainState, params=None) -> TrainState:
  """Initialises the state directly into its shardings (no host copy of the full params).

  params: optional starting parameters already placed in shardings.params (wan.load_transformer
  does that); the optimizer state and EMA are built around them on device.
  """
  with jax.set_mesh(mesh):
    if params is None:
      return jax.jit(lambda: init_state(config, optimizer), out_shardings=shardings)()
    return jax.jit(lambda p: init_state(config, optimizer, p), in_shardings=(shardings.params,),
                   out_shardings=shardings)(params)


def reset_optimizer(state: TrainState, optimizer) -> TrainState:
  """The state with a fresh optimizer state (for stages that do not carry it over)."""
  return state.replace(opt_state=optimizer.init(state.params))


def state_bytes_per_device(abstract: TrainState) -> dict[str, int]:
  """Bytes of params / opt_state / ema_params held by one device, and the unsharded total."""
  def per_device(tree):
    return sum(jnp.dtype(x.dtype).itemsize * math.prod(x.sharding.shard_shape(x.shape))
               for x in jax.tree.leaves(tree))
  def total(tree):
    return sum(jnp.dtype(x.dtype).itemsize * math.prod(x.shape) for x in jax.tree.leaves(tree))
  return {"params": per_device(abstract.params), "opt_state": per_device(abstract.opt_state),
          "ema_params": per_device(abstract.ema_params),
          "total": total((abstract.params, abstract.opt_state, abstract.ema_params))}
