"""Flow-ODE solvers and guidance against closed-form solutions, and on a tiny UnityDiT.

Analytic reference: for data x_0 ~ N(μ, diag σ²) and noise ε ~ N(0, I), the rectified-flow
velocity E[ε − x_0 | x_t] is v(x, t) = −μ + (t − (1 − t)σ²)/s_t² · (x − (1 − t)μ) with
s_t² = (1 − t)²σ² + t², and the ODE from t = 1 maps x_1 to exactly x_0 = μ + σ·x_1.
"""

import math
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unity_jax import config as config_lib
from unity_jax.flow import samplers, schedules
from unity_jax.sample import denoise

import sampling_utils

MU = jnp.array([2.0, -1.0, 0.5, 0.0])
SIGMA = jnp.array([0.5, 1.5, 0.2, 1.0])


def gaussian_velocity(x, t, mu=MU, sigma=SIGMA):
  s2 = (1.0 - t) ** 2 * sigma ** 2 + t ** 2
  return -mu + (t - (1.0 - t) * sigma ** 2) / s2 * (x - (1.0 - t) * mu)


def _noise(shape=(256, 4), seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def _solve(solver, num_steps, shift, x1, velocity=gaussian_velocity):
  run = jax.jit(lambda x, ts: samplers.integrate(velocity, x, ts, solver))
  return run(x1, schedules.sampling_schedule(num_steps, shift))


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("multistep", 2)])
def test_convergence_order_on_gaussian_flow(solver, order, shift):
  x1 = _noise()
  exact = MU + SIGMA * x1
  errors = [float(jnp.abs(_solve(solver, n, shift, x1) - exact).max()) for n in (64, 128, 256)]
  observed = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
  # Halving the step divides the global error by 2**order (measured: euler 0.98-1.00,
  # heun 1.85-1.99, multistep 2.02-2.10).
  assert order - 0.15 < observed[-1] < order + 0.2, (errors, observed)
  assert errors[-1] < {1: 0.03, 2: 1e-3}[order], errors   # measured <= 0.0215, 5.2e-4


def test_euler_50_and_heun_25_agree_on_gaussian_flow():
  """Equal cost (50 evaluations): Heun is ~25x closer to the exact solution; both close."""
  x1 = _noise()
  exact = MU + SIGMA * x1
  euler = _solve("euler", 50, 3.0, x1)
  heun = _solve("heun", 25, 3.0, x1)
  assert float(jnp.abs(heun - exact).max()) < 0.02         # measured 0.0137
  assert float(jnp.abs(euler - exact).max()) < 0.13        # measured 0.116
  assert float(jnp.abs(euler - heun).max()) < 0.13


def test_schedule_runs_from_noise_to_data_and_single_step_euler_is_exact_for_linear_paths():
  ts = schedules.sampling_schedule(10, 5.0)
  assert float(ts[0]) == 1.0 and float(ts[-1]) == 0.0 and bool(jnp.all(jnp.diff(ts) < 0))
  # A point mass x_0 = μ has velocity (x − μ)/t: straight paths, exact in one Euler step.
  x1 = _noise()
  velocity = lambda x, t: (x - MU) / jnp.maximum(t, 1e-6)
  out = _solve("euler", 1, 1.0, x1, velocity)
  np.testing.assert_allclose(out, jnp.broadcast_to(MU, out.shape), atol=1e-6)


def test_integrate_accepts_pytrees_and_traces_once_per_shape():
  def velocity(state, t):
    return {"a": gaussian_velocity(state["a"], t), "b": -state["b"]}
  run = jax.jit(chex.assert_max_traces(
      lambda x, ts: samplers.integrate(velocity, x, ts, "heun"), n=1))
  ts = schedules.sampling_schedule(20, 1.0)
  for seed in range(3):   # new values, same shapes: no retrace
    x1 = {"a": _noise(seed=seed), "b": jnp.ones((3,))}
    out = run(x1, ts)
  np.testing.assert_allclose(out["a"], MU + SIGMA * x1["a"], atol=5e-3)
  np.testing.assert_allclose(out["b"], jnp.full((3,), math.e), rtol=1e-3)  # db/dt = −b, 1 -> 0


def test_guide_scale_one_is_the_conditional_exactly():
  cond = {"v": _noise(seed=1)}
  uncond = {"v": _noise(seed=2)}
  out = samplers.guide(cond, [(uncond, jnp.float32(1.0)), (uncond, 1.0)])
  np.testing.assert_array_equal(out["v"], cond["v"])
  guided = samplers.guide(cond, [(uncond, 7.5)])
  np.testing.assert_allclose(guided["v"], uncond["v"] + 7.5 * (cond["v"] - uncond["v"]),
                             atol=1e-5)


def test_unknown_solver_and_empty_schedule_raise():
  with pytest.raises(ValueError, match="unknown solver 'rk4'.*euler"):
    samplers.integrate(gaussian_velocity, _noise(), jnp.linspace(1, 0, 5), "rk4")
  with pytest.raises(ValueError, match="at least one step"):
    samplers.integrate(gaussian_velocity, _noise(), jnp.ones((1,)), "euler")


# --- the full denoising loop (task routing + guidance) on closed-form velocities --------------


class _GaussianModel:
  """Stands in for UnityDiT: every stream flows to N(μ(caption), σ²) per latent element.

  μ = mean of the caption tokens / 100 (the empty caption gives a different μ, so CFG has a
  closed form: the guided field is the Gaussian field of μ_c + (s − 1)(μ_c − μ_u)); a dropped
  stream (modality_id −1) shifts μ by +1 so condition guidance is visible too.
  """
  sigma = 0.5

  def apply(self, variables, *, rgb, t_rgb, caption, modality=None, modality_id=None,
            t_modality=None, prompt=None):
    del variables, prompt
    tokens = caption["tokens"].astype(jnp.float32) * caption["mask"]
    mu = tokens.sum(1) / caption["mask"].sum(1) / 100.0                  # [B]
    expand = lambda a, ndim: a.reshape(a.shape + (1,) * (ndim - a.ndim))
    field = lambda x, mu, t: gaussian_velocity(x, expand(t, x.ndim), expand(mu, x.ndim),
                                               self.sigma)
    dropped = 0.0 if modality_id is None else (modality_id[:, 0] < 0).astype(jnp.float32)
    rgb_v = field(rgb, mu + dropped, t_rgb)
    if modality is None:
      return rgb_v, None
    return rgb_v, field(modality, mu[:, None], t_modality)


def _loop_inputs(batch=2):
  shape = (batch, 2, 4, 4, 3)
  tokens = jnp.array([[1, 120, 2, 0], [1, 160, 180, 2]])[:batch]
  empty = jnp.array([[1, 2, 0, 0]] * batch)
  return dict(rgb=_noise(shape, 3), modality=_noise((batch, 1, *shape[1:]), 4),
              modality_id=jnp.zeros((batch, 1), jnp.int32),
              caption={"tokens": tokens, "mask": tokens > 0},
              empty_caption={"tokens": empty, "mask": empty > 0},
              prompt={"tokens": jnp.ones((batch, 1, 3), jnp.int32),
                      "mask": jnp.ones((batch, 1, 3), bool)})


def _mu(caption):
  tokens = np.asarray(caption["tokens"], np.float32) * np.asarray(caption["mask"])
  return tokens.sum(1) / np.asarray(caption["mask"]).sum(1) / 100.0


def _run_loop(spec, inputs, steps, guidance=1.0, condition=1.0):
  sample = denoise.make_sample_fn(_GaussianModel(), spec)
  ts = schedules.sampling_schedule(steps, 3.0)
  return jax.jit(sample)(None, inputs, ts, jnp.float32(guidance), jnp.float32(condition))


def test_guided_joint_sampling_reaches_the_closed_form_target():
  inputs = _loop_inputs()
  mu_c, mu_u = _mu(inputs["caption"]), _mu(inputs["empty_caption"])
  expand = lambda mu, x: mu.reshape((-1,) + (1,) * (x.ndim - 1))
  spec = denoise.SamplerSpec("joint", solver="heun", text_guidance=True)
  rgb, modality = _run_loop(spec, inputs, 40, guidance=3.0)
  mu_g = mu_c + 2.0 * (mu_c - mu_u)
  np.testing.assert_allclose(rgb, expand(mu_g, rgb) + 0.5 * inputs["rgb"], atol=2e-3)
  np.testing.assert_allclose(modality, expand(mu_g, modality) + 0.5 * inputs["modality"],
                             atol=2e-3)


def test_control_guidance_and_fixed_condition_stream():
  inputs = _loop_inputs()
  mu_c = _mu(inputs["caption"])
  spec = denoise.SamplerSpec("control", solver="heun", condition_guidance=True)
  rgb, modality = _run_loop(spec, inputs, 40, condition=2.0)
  np.testing.assert_array_equal(modality, inputs["modality"])     # the condition, bit for bit
  mu_g = mu_c + 1.0 * (mu_c - (mu_c + 1.0))                       # dropped stream: μ + 1
  np.testing.assert_allclose(rgb, mu_g.reshape(-1, 1, 1, 1, 1) + 0.5 * inputs["rgb"], atol=2e-3)


def test_estimate_keeps_rgb_and_rgb_task_has_no_modality():
  inputs = _loop_inputs()
  rgb, modality = _run_loop(denoise.SamplerSpec("estimate"), inputs, 8)
  np.testing.assert_array_equal(rgb, inputs["rgb"])
  assert not np.allclose(modality, inputs["modality"])
  rgb_only = {k: v for k, v in inputs.items() if k not in ("modality", "modality_id", "prompt")}
  rgb, modality = _run_loop(denoise.SamplerSpec("rgb"), rgb_only, 8)
  assert modality is None and rgb.shape == inputs["rgb"].shape


class _TimestepEchoModel:
  """RGB velocity = the modality stream's conditioning timestep t_m (modality velocity 0)."""

  def apply(self, variables, *, rgb, t_modality=None, modality=None, **unused):
    del variables, unused
    return jnp.broadcast_to(t_modality[:, :, None, None, None], rgb.shape), jnp.zeros_like(
        modality)


def test_clean_stream_timestep_is_zero_or_shared_like_training():
  """objective.timesteps='independent' trains the clean control stream at t_m = 0; 'shared'
  conditions both streams on the noised stream's t, and sampling must do the same."""
  inputs = _loop_inputs()
  ts = schedules.sampling_schedule(4, 3.0)
  run = lambda shared: jax.jit(denoise.make_sample_fn(
      _TimestepEchoModel(), denoise.SamplerSpec("control", shared_timesteps=shared)))(
          None, inputs, ts, 1.0, 1.0)[0]
  np.testing.assert_array_equal(run(False), inputs["rgb"])             # t_m = 0 throughout
  euler_sum = float(jnp.sum(jnp.diff(ts) * ts[:-1]))                   # Σ h_n t_n
  np.testing.assert_allclose(run(True), inputs["rgb"] + euler_sum, atol=1e-6)


def test_sampler_spec_rejects_bad_combinations():
  with pytest.raises(ValueError, match="unknown sampling task 'inpaint'"):
    denoise.SamplerSpec("inpaint")
  with pytest.raises(ValueError, match="condition guidance applies to task 'control' only"):
    denoise.SamplerSpec("joint", condition_guidance=True)


# --- a tiny UnityDiT with random weights (smooth in t, see sampling_utils.random_params) ------


def test_euler_50_and_heun_25_agree_on_a_tiny_unity_dit():
  from unity_jax import Pipeline  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config("configs/tiny.py:smoke")
  config.objective.shift = 3.0
  pipe = Pipeline(config, sampling_utils.random_params(config),
                  mesh=sampling_utils.one_device_mesh())
  inputs, _ = pipe.prepare_inputs("joint", ["a red ball rolls left", "two people walk"],
                                  "depth")
  run = lambda solver, steps: np.concatenate([
      x.reshape(2, -1) for x in pipe.sample_latents(denoise.SamplerSpec("joint", solver), inputs,
                                                    steps)], axis=1)
  reference, euler, heun = run("heun", 100), run("euler", 50), run("heun", 25)
  rms = lambda a, b: float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))
  # Relative RMS differences, shift 3 (measured: euler50-heun25 6.9e-3, euler50-ref 7.1e-3,
  # heun25-ref 3.3e-4; against heun 200: euler 25/50 1.4e-2/7.1e-3, heun 25/50 3.3e-4/7.9e-5,
  # i.e. first and second order). Stated tolerance: Euler 50 and Heun 25 within 1e-2.
  assert rms(euler, heun) < 1e-2
  assert rms(heun, reference) < 1e-3
  assert rms(heun, reference) < 0.1 * rms(euler, reference)
