"""Timestep distributions and the shifted flow schedule (rectified flow, t=0 data, t=1 noise)."""

import jax
import jax.numpy as jnp


def shift_timesteps(t, shift: float):
  """Wan/SD3 shift: t' = s·t / (1 + (s − 1)·t). s > 1 spends more time at high noise."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def sample_timesteps(rng, shape, *, sampling="logit_normal", logit_mean=0.0, logit_std=1.0,
                     shift=1.0):
  """Training timesteps in (0, 1): uniform or logit-normal, then shifted. float32 [shape]."""
  if sampling == "uniform":
    t = jax.random.uniform(rng, shape, minval=1e-5, maxval=1.0)
  elif sampling == "logit_normal":
    t = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, shape))
  else:
    raise ValueError(f"unknown timestep sampling {sampling!r}; expected 'uniform' or "
                     "'logit_normal'")
  return shift_timesteps(t, shift)


def sampling_schedule(num_steps: int, shift: float = 1.0):
  """Decreasing timesteps 1 = t_0 > … > t_N = 0 on the shifted schedule. float32 [num_steps+1]."""
  return shift_timesteps(jnp.linspace(1.0, 0.0, num_steps + 1), shift)
