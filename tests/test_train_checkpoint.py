"""Checkpoints of the real model's train state across mesh layouts (8 fake CPU devices).

A state saved on a (data, fsdp, tensor) = (4, 2, 1) mesh restores bitwise on (2, 2, 2) and
(8, 1, 1) with the new layouts' shardings; the slow test also takes one training step after
each restore and checks the layouts agree within 1e-6.
"""

import jax
import numpy as np
import pytest

from unity_jax import config as config_lib
from unity_jax import model as model_lib
from unity_jax.model import codec as codec_lib
from unity_jax.parallel import mesh as mesh_lib
from unity_jax.train import checkpoint as checkpoint_lib
from unity_jax.train import optim
from unity_jax.train import sources
from unity_jax.train import state as state_lib
from unity_jax.train import step as step_lib

LAYOUTS = {"4x2x1": (4, 2, 1), "2x2x2": (2, 2, 2), "8x1x1": (8, 1, 1)}


def layout_config(layout):
  config = config_lib.load_config("configs/tiny.py:smoke")
  data, fsdp, tensor = LAYOUTS[layout]
  config.mesh.update(data=data, fsdp=fsdp, tensor=tensor, context=1)
  config_lib.validate(config, 8)
  return config


def setup(layout):
  config = layout_config(layout)
  mesh = mesh_lib.make_mesh(config)
  optimizer = optim.make_optimizer(config, state_lib.abstract_params(config))
  abstract, shardings = state_lib.abstract_state(config, mesh, optimizer)
  return config, mesh, optimizer, abstract, shardings


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A (4, 2) state of init-like random values (no compile needed) at step 5."""
  _, _, _, abstract, shardings = setup("4x2x1")
  rng = np.random.default_rng(0)
  normal = lambda scale: lambda x: (scale * rng.normal(size=x.shape)).astype(x.dtype)
  adam = abstract.opt_state[1]
  state = abstract.replace(
      step=np.int32(5), stage=np.int32(0), rng=np.asarray([0, 7], np.uint32),
      params=jax.tree.map(normal(0.05), abstract.params),
      ema_params=jax.tree.map(normal(0.05), abstract.params),
      opt_state=(abstract.opt_state[0], adam._replace(
          count=np.int32(5), mu=jax.tree.map(normal(1e-3), adam.mu),
          nu=jax.tree.map(lambda x: rng.uniform(1e-7, 1e-6, x.shape).astype(x.dtype),
                          adam.nu))) + tuple(abstract.opt_state[2:]),
      nonfinite_total=np.int32(0), nonfinite_consecutive=np.int32(0))
  state = jax.device_put(state, shardings)
  directory = str(tmp_path_factory.mktemp("ckpt") / "checkpoints")
  checkpointer = checkpoint_lib.Checkpointer(directory, keep=2)
  assert checkpointer.save(state, config_json={"layout": "4x2x1"})
  checkpointer.close()
  return directory, jax.device_get(state)


@pytest.mark.parametrize("layout", ["2x2x2", "8x1x1"])
def test_restore_onto_another_mesh_is_bitwise_identical(saved, layout):
  directory, expected = saved
  config, mesh, _, abstract, shardings = setup(layout)
  checkpointer = checkpoint_lib.Checkpointer(directory, keep=2)
  assert checkpointer.latest_step() == 5
  assert checkpointer.read_meta(5) == {"step": 5, "stage": 0, "data": False}
  restored = checkpointer.restore(5, abstract)
  checkpointer.close()
  for got, want, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(expected),
                                 jax.tree.leaves(shardings)):
    assert got.sharding == sharding
    np.testing.assert_array_equal(np.asarray(got), want)
  kernel = restored.params["blocks"]["block"]["ffn"]["up"]["kernel"]      # [layers, embed, mlp]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert config.mesh.tensor == LAYOUTS[layout][2]


@pytest.mark.slow
def test_one_step_after_restore_agrees_across_layouts(saved):
  directory, _ = saved
  results = {}
  for layout in ("2x2x2", "8x1x1"):
    config, mesh, optimizer, abstract, shardings = setup(layout)
    checkpointer = checkpoint_lib.Checkpointer(directory, keep=2)
    state = checkpointer.restore(5, abstract)
    checkpointer.close()
    train_step = step_lib.make_train_step(
        config, model_lib.build_model(config), optimizer,
        optim.lr_multipliers(config, state_lib.abstract_params(config)))
    jitted = step_lib.jit_train_step(train_step, shardings, mesh)
    batch = sources.RandomSource(config, 0).next_batch(5)
    assert set(batch) == set(sources.batch_shapes(config, config.train.batch_size))
    with jax.set_mesh(mesh):
      state, metrics = jitted(state, mesh_lib.shard_batch(batch, mesh), codec_lib.make_codec(config))
    results[layout] = jax.device_get((state, metrics))
  (state_a, metrics_a), (state_b, metrics_b) = results.values()
  assert np.isfinite(metrics_a["loss"])
  np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], atol=1e-6, rtol=0)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
