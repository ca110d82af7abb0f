"""Sharded forward + loss + gradients equal the unsharded result; committed layout dumps."""

import pathlib

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

from unity_jax import config as config_lib
from unity_jax.flow import batch as batch_lib
from unity_jax.flow import objective
from unity_jax.model import build_model, init_params, logical_param_axes
from unity_jax.model.codec import make_codec
from unity_jax.parallel import dump
from unity_jax.parallel import mesh as mesh_lib
from unity_jax.parallel import rules as rules_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _loss_and_grad_fn(config):
  model, codec = build_model(config), make_codec(config)
  rules = rules_lib.rules_for(config.mesh.rules)

  def loss(params, batch, rng):
    return objective.loss_fn(params, model.apply, batch_lib.to_latent_batch(batch, codec), rng,
                             config.objective)

  def loss_and_grad(params, batch, rng):
    with nn.logical_axis_rules(rules):
      return jax.value_and_grad(loss, has_aux=True)(params, batch, rng)
  return loss_and_grad


@pytest.fixture(scope="module")
def reference():
  config = config_lib.load_config("configs/tiny.py:smoke")
  params = init_params(config, jax.random.key(0))
  # Perturb so gates/heads are non-zero and every parameter gets a gradient.
  params = jax.tree.map(lambda x: x + 0.02 * np.cos(np.arange(x.size).reshape(x.shape)), params)
  batch = batch_lib.random_pipeline_batch(config, 8, seed=0, rgb_only_fraction=0.25)
  (loss, metrics), grads = jax.jit(_loss_and_grad_fn(config))(params, batch, jax.random.key(1))
  return config, params, batch, loss, metrics, grads


@pytest.mark.parametrize("shape", [(8, 1, 1, 1), (2, 2, 2, 1), (1, 4, 2, 1), (2, 1, 2, 2)])
def test_sharded_loss_and_grads_equal_unsharded(reference, shape):
  config, params, batch, loss, metrics, grads = reference
  config = config.copy_and_resolve_references()
  config.mesh.update(data=shape[0], fsdp=shape[1], tensor=shape[2], context=shape[3])
  config_lib.validate(config, jax.device_count())
  mesh = mesh_lib.make_mesh(config)
  param_shardings = mesh_lib.logical_to_sharding(logical_param_axes(config), mesh, config)
  with jax.set_mesh(mesh):
    step = jax.jit(_loss_and_grad_fn(config),
                   in_shardings=(param_shardings, mesh_lib.batch_sharding(mesh), None),
                   out_shardings=((None, None), param_shardings))
    (sharded_loss, sharded_metrics), sharded_grads = step(
        jax.device_put(params, param_shardings), mesh_lib.shard_batch(batch, mesh),
        jax.random.key(1))
  # Parameters really are sharded (not silently replicated) on meshes with fsdp/tensor > 1.
  kernel = sharded_grads["blocks"]["block"]["ffn"]["up"]["kernel"]
  assert kernel.sharding.shard_shape(kernel.shape)[1:] == (
      kernel.shape[1] // shape[1], kernel.shape[2] // shape[2])
  np.testing.assert_allclose(sharded_loss, loss, atol=1e-5)
  chex.assert_trees_all_close(sharded_metrics, metrics, atol=1e-5)
  chex.assert_trees_all_close(sharded_grads, grads, atol=1e-5)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads)) > 0


def test_loss_and_grad_traces_once(reference):
  config, params, batch, _, _, _ = reference
  fn = jax.jit(chex.assert_max_traces(_loss_and_grad_fn(config), n=1))
  for seed in range(3):
    new_batch = batch_lib.random_pipeline_batch(config, 8, seed=seed)
    (loss, _), _ = fn(params, new_batch, jax.random.key(seed))
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("name", ["tiny", "unity_5b"])
def test_committed_partition_dump_is_current(name):
  """docs/sharding/NAME.txt must match the code; regenerate with the command in dump.py."""
  config = config_lib.load_config(str(ROOT / "configs" / f"{name}.py"))
  committed = (ROOT / "docs" / "sharding" / f"{name}.txt").read_text()
  assert dump.partition_dump(config) == committed, (
      f"layout changed: python -m unity_jax.parallel.dump --config configs/{name}.py "
      f"> docs/sharding/{name}.txt")
