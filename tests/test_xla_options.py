"""Per-platform XLA compiler options: which are chosen, and that the train step and the sampler
are really compiled with them (CPU dots outside YNNPACK fusions, the same numbers)."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unity_jax import Pipeline
from unity_jax import config as config_lib
from unity_jax import xla_options
from unity_jax.train import trainer as trainer_lib

import sampling_utils


def dots_in_ynn_fusions(hlo_text: str) -> int:
  """Number of dot instructions inside computations that a `__ynn_fusion` calls."""
  called = set(re.findall(r"calls=%([\w.\-]+)[^\n]*__ynn_fusion", hlo_text))
  count = 0
  for block in hlo_text.split("\n\n"):
    header = re.match(r"\s*%([\w.\-]+) ", block)
    if header and header.group(1) in called:
      count += len(re.findall(r" dot\(", block))
  return count


def test_options_per_platform_opt_out_and_user_flags():
  assert xla_options.compiler_options("cpu", {}) == xla_options.CPU_OPTIONS
  assert xla_options.compiler_options("cpu", {"UNITY_JAX_CPU_DOTS": "Eigen "}) == \
      xla_options.CPU_OPTIONS
  assert xla_options.compiler_options("tpu", {}) == {}
  assert xla_options.compiler_options("gpu", {}) == {}
  assert xla_options.compiler_options("cpu", {"UNITY_JAX_CPU_DOTS": "ynnpack"}) == {}
  user_flag = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                            "--xla_cpu_experimental_ynn_fusion_type=+reduce"}
  assert xla_options.compiler_options("cpu", user_flag) == {}
  with pytest.raises(ValueError, match=r"UNITY_JAX_CPU_DOTS='mkl'.*'eigen'.*'ynnpack'"):
    xla_options.compiler_options("cpu", {"UNITY_JAX_CPU_DOTS": "mkl"})


def test_for_mesh_follows_the_mesh_platform():
  # The options reach only CPU compiles: a TPU or GPU mesh gets XLA's defaults.
  fake_mesh = lambda platform: types.SimpleNamespace(
      devices=np.array([types.SimpleNamespace(platform=platform)]))
  assert xla_options.for_mesh(fake_mesh("tpu")) == {}
  assert xla_options.for_mesh(fake_mesh("gpu")) == {}
  cpu_mesh = jax.sharding.Mesh(np.array(jax.devices("cpu")[:1]), ("data",))
  assert xla_options.for_mesh(cpu_mesh) == xla_options.compiler_options("cpu")


def test_cpu_options_move_dots_out_of_ynnpack_with_the_same_result():
  a = jax.random.normal(jax.random.key(0), (96, 80), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (80, 64), jnp.float32)
  fn = lambda x, y: jnp.tanh(x @ y)
  default = jax.jit(fn).lower(a, b).compile()
  tuned = jax.jit(fn, compiler_options=xla_options.compiler_options("cpu", {})).lower(a, b)
  tuned = tuned.compile()
  # Guards the premise: if XLA stops sending dots to YNNPACK, this module has nothing to do.
  assert dots_in_ynn_fusions(default.as_text()) == 1
  assert dots_in_ynn_fusions(tuned.as_text()) == 0
  np.testing.assert_allclose(tuned(a, b), default(a, b), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def config():
  config = config_lib.load_config("configs/tiny.py:smoke")
  config.mesh.update(data=1, fsdp=1, tensor=1, context=1)
  return config


def test_train_step_compiles_with_the_options(config, tmp_path):
  compiled = trainer_lib.Trainer(config, str(tmp_path), devices=jax.devices()[:1]).compile()
  text = compiled.as_text()
  num_dots = len(re.findall(r" dot\(", text))
  assert num_dots > 20
  # A dot that feeds a reduction may still be fused into it (REDUCE stays with YNNPACK); XLA's
  # default puts most dots there (small's step: 361 of 452; with the options 6).
  assert dots_in_ynn_fusions(text) <= num_dots // 10


def test_sampler_compiles_with_the_options(config, monkeypatch):
  pipe = Pipeline(config, sampling_utils.random_params(config),
                  mesh=sampling_utils.one_device_mesh())
  bogus = {xla_options.YNN_FUSION_TYPES: "NOT_A_FUSION_TYPE"}
  monkeypatch.setattr(xla_options, "for_mesh", lambda mesh: bogus)
  with pytest.raises(Exception, match="NOT_A_FUSION_TYPE"):
    pipe.generate("a red ball rolls left", modality="depth", num_steps=2, seed=0)
