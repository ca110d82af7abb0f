"""Tests of the pure train step (unity_jax.train.step) with a stand-in model.

The step's logic (micro-batching, per-group learning rates, non-finite skip, EMA, tracing) does
not depend on the network, so these tests use a per-token linear model with UnityDiT's call
signature and parameter names: it compiles in about a second on 8 fake devices. The real model
goes through the same step in tests/test_train_checkpoint.py and the CLI tests.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.model import codec as codec_lib
from unity_jax.model import dummy_inputs
from unity_jax.parallel import mesh as mesh_lib
from unity_jax.train import curriculum
from unity_jax.train import optim
from unity_jax.train import sources
from unity_jax.train import state as state_lib
from unity_jax.train import step as step_lib

BATCH = 32


class ToyDiT(nn.Module):
  """Per-token linear velocities with UnityDiT's inputs and outputs (see the module docstring)."""

  @nn.compact
  def __call__(self, rgb, t_rgb, caption, modality, modality_id, t_modality, prompt):
    channels = rgb.shape[-1]
    trunk = nn.Dense(channels, name="trunk")     # shared by both streams, like the DiT blocks
    expand = lambda x, n: x.reshape(x.shape + (1,) * n)
    text = (caption["tokens"] * caption["mask"]).mean(-1) / 100.0            # [B]
    rgb_in = rgb * (1.0 + expand(t_rgb, 4)) + expand(text, 4)
    rgb_velocity = nn.Dense(channels, name="rgb_head")(trunk(rgb_in))
    embedding = nn.Embed(len(constants.MODALITIES), channels, name="modality_embed")(
        jnp.maximum(modality_id, 0))                                          # [B, S, C]
    prompt_text = (prompt["tokens"] * prompt["mask"]).mean(-1) / 100.0      # [B, S]
    mod_in = (modality * (1.0 + expand(t_modality, 4)) + embedding[:, :, None, None, None] +
              expand(prompt_text, 4))
    modality_velocity = nn.Dense(channels, name="modality_head")(trunk(mod_in))
    return rgb_velocity, modality_velocity


def make_config(**train):
  config = config_lib.load_config("configs/tiny.py:smoke")
  config.train.update(batch_size=BATCH, **train)
  config.mesh.update(data=8, fsdp=1)
  config_lib.validate(config, 8)
  return config


class Harness:
  """A compiled toy step on an 8-way data-parallel mesh, plus a fresh state and batches."""

  def __init__(self, config, *, wrap=None):
    self.config = config
    self.mesh = mesh_lib.make_mesh(config)
    model = ToyDiT()
    params = model.init(jax.random.key(1), **dummy_inputs(config, 2))["params"]
    self.optimizer = optim.make_optimizer(config, params)
    multipliers = optim.lr_multipliers(config, params)
    zero = jnp.zeros((), jnp.int32)
    state = state_lib.TrainState(
        step=zero, stage=zero, rng=jax.random.key_data(jax.random.key(2)), params=params,
        opt_state=self.optimizer.init(params), ema_params=params, nonfinite_total=zero,
        nonfinite_consecutive=zero)
    self.shardings = jax.tree.map(lambda _: NamedSharding(self.mesh, P()), state)
    self.state0 = jax.device_put(state, self.shardings)
    self.codec = codec_lib.make_codec(config)
    step = step_lib.make_train_step(config, model, self.optimizer, multipliers)
    if wrap is not None:
      step = wrap(step)
    self.jitted = step_lib.jit_train_step(step, self.shardings, self.mesh)
    self.source = sources.RandomSource(config, 0)

  def fresh_state(self):
    return jax.tree.map(jnp.copy, self.state0)

  def batch(self, step, nan=False):
    local = self.source.next_batch(step)
    local[step_lib.NAN_INJECTION_KEY] = np.full((BATCH,), np.nan if nan else 0.0, np.float32)
    return mesh_lib.shard_batch(local, self.mesh)

  def step(self, state, batch):
    with jax.set_mesh(self.mesh):
      return self.jitted(state, batch, self.codec)


@pytest.fixture(scope="module")
def base():
  return Harness(make_config())


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def test_accumulated_micro_batches_equal_one_big_batch(base):
  accumulated = Harness(make_config(accumulate_steps=4))
  batch = base.batch(0)
  big_state, big_metrics = base.step(base.fresh_state(), batch)
  acc_state, acc_metrics = accumulated.step(accumulated.fresh_state(), batch)
  big, acc = host(big_state), host(acc_state)
  # Adam's first moment is (1 - b1) * grad: compare the gradients themselves.
  grads = lambda s: jax.tree.map(lambda m: m / (1 - base.config.train.b1), s.opt_state[1].mu)
  chex.assert_trees_all_close(grads(acc), grads(big), atol=1e-5, rtol=0)
  chex.assert_trees_all_close(acc.params, big.params, atol=1e-5, rtol=0)
  chex.assert_trees_all_close(acc.ema_params, big.ema_params, atol=1e-5, rtol=0)
  for key in ("loss", "loss/task/joint", "loss/rgb", "grad_norm"):
    np.testing.assert_allclose(acc_metrics[key], big_metrics[key], atol=1e-5, rtol=0)
  assert float(big_metrics["grad_norm"]) > 0


def test_lr_multipliers_scale_the_update_of_matching_leaves(base):
  multiplied = Harness(make_config(lr_multipliers=(("modality_*", 10.0),
                                                   ("rgb_head/bias", 0.0))))
  batch = base.batch(0)
  before = host(base.state0.params)
  plain, _ = base.step(base.fresh_state(), batch)
  scaled, _ = multiplied.step(multiplied.fresh_state(), batch)
  plain_delta = {k: v - before_v for (k, v), before_v in zip(
      _by_path(host(plain.params)).items(), _by_path(before).values())}
  scaled_delta = {k: v - before_v for (k, v), before_v in zip(
      _by_path(host(scaled.params)).items(), _by_path(before).values())}
  expected = {"modality_embed/embedding": 10.0, "modality_head/kernel": 10.0,
              "modality_head/bias": 10.0, "rgb_head/bias": 0.0, "rgb_head/kernel": 1.0,
              "trunk/kernel": 1.0, "trunk/bias": 1.0}
  assert set(expected) == set(plain_delta)
  for path, multiplier in expected.items():
    assert np.abs(plain_delta[path]).max() > 0, path
    # Deltas are differences of float32 params: each carries half an ulp of |param| of rounding.
    rounding = (1.0 + multiplier) * np.spacing(np.abs(_by_path(before)[path]))
    error = np.abs(scaled_delta[path] - multiplier * plain_delta[path])
    assert np.all(error <= rounding + 1e-5 * np.abs(multiplier * plain_delta[path])), path


def _by_path(tree):
  return dict(zip(optim.leaf_paths(tree), jax.tree.leaves(tree)))


def test_nonfinite_step_keeps_params_optimizer_and_ema(base):
  state = base.fresh_state()
  state, _ = base.step(state, base.batch(0))
  before = host(state)
  state, metrics = base.step(state, base.batch(1, nan=True))
  after = host(state)
  assert not np.isfinite(metrics["loss"]) and int(metrics["nonfinite"]) == 1
  chex.assert_trees_all_equal(after.params, before.params)
  chex.assert_trees_all_equal(after.opt_state, before.opt_state)
  chex.assert_trees_all_equal(after.ema_params, before.ema_params)
  assert (int(after.step), int(after.nonfinite_total), int(after.nonfinite_consecutive)) == \
      (2, 1, 1)
  state, _ = base.step(state, base.batch(2, nan=True))
  assert int(state.nonfinite_consecutive) == 2
  state, metrics = base.step(state, base.batch(3))
  assert int(metrics["nonfinite"]) == 0
  assert (int(state.nonfinite_total), int(state.nonfinite_consecutive)) == (2, 0)
  assert not np.array_equal(host(state.params)["trunk"]["kernel"], after.params["trunk"]["kernel"])


def test_ema_follows_params(base):
  p0 = host(base.state0.params)
  state, _ = base.step(base.fresh_state(), base.batch(0))
  decay = np.float32(base.config.train.ema_decay)
  expected = jax.tree.map(lambda e, p: decay * e + (np.float32(1) - decay) * p, p0,
                          host(state.params))
  chex.assert_trees_all_close(host(state.ema_params), expected, atol=1e-7, rtol=0)


def test_step_traces_once_across_steps_and_stages_and_ema_interval():
  config = make_config(carry_optimizer_across_stages=False, ema_every=2)
  config.stages[0].steps = 3
  harness = Harness(config, wrap=lambda f: chex.assert_max_traces(f, n=1))
  enter = jax.jit(lambda s, stage: curriculum.enter_stage(
      harness.config, s, stage, lambda x: state_lib.reset_optimizer(x, harness.optimizer)),
                  static_argnums=1, out_shardings=harness.shardings)
  p0 = host(harness.state0.params)
  state, _ = harness.step(harness.fresh_state(), harness.batch(0))
  chex.assert_trees_all_equal(host(state.ema_params), p0)       # ema_every=2: not due yet
  state, _ = harness.step(state, harness.batch(1))
  assert not np.array_equal(host(state.ema_params)["trunk"]["kernel"], p0["trunk"]["kernel"])
  state, _ = harness.step(state, harness.batch(2))
  state = enter(state, 1)
  assert int(state.stage) == 1 and int(state.opt_state[1].count) == 0
  state, metrics = harness.step(state, harness.batch(3))
  assert int(state.step) == 4 and np.isfinite(metrics["loss"])
  # Stage 1 restarts its schedule: step 3 is its first step (warmup: 1/10 of the peak).
  np.testing.assert_allclose(metrics["lr"], harness.config.train.lr / 10, rtol=1e-6)
