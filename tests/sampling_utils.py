"""Shared by the sampling tests: fast random UnityDiT weights and a one-device mesh."""

import math

import jax
import numpy as np

from unity_jax import config as config_lib
from unity_jax.model import init_params


def random_params(config, seed: int = 0, *, max_time_frequency: float | None = 4.0):
  """Random non-zero weights of config's UnityDiT, built in numpy (seconds faster than init).

  Matrices get N(0, 1/fan_in), norm scales 1 + N(0, 0.05²), other vectors N(0, 0.05²); the
  zero-initialised gates and heads are random too (zeros would hide most bugs).
  `max_time_frequency` keeps only timestep-sinusoid frequencies <= that many rad per unit t:
  random weights on Wan's sinusoid (up to 1000 rad) make the velocity oscillate with a period of
  ~0.006 in t, which no 25-50-step solver resolves, whereas a trained model is smooth in t.
  """
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if len(leaf.shape) >= 2:
      return noise / math.sqrt(leaf.shape[-2])
    return (1.0 + 0.05 * noise) if name.endswith("['scale']") else 0.05 * noise
  params = jax.tree_util.tree_map_with_path(draw, shapes)
  if max_time_frequency is not None:
    half = config.model.freq_dim // 2
    freqs = 1000.0 * np.exp(-math.log(10000.0) * np.arange(half) / half)
    slow = np.tile(freqs <= max_time_frequency, 2).astype(np.float32)[:, None]
    params["time_embed"]["fc1"]["kernel"] = params["time_embed"]["fc1"]["kernel"] * slow
  return params


def one_device_mesh(num_devices: int = 1):
  """A (data=num_devices, 1, 1, 1) mesh over the first devices."""
  devices = np.asarray(jax.devices()[:num_devices]).reshape(num_devices, 1, 1, 1)
  return jax.sharding.Mesh(devices, config_lib.MESH_AXES)
