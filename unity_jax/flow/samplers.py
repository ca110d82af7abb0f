"""Flow-ODE solvers and classifier-free guidance for rectified-flow sampling.

Convention (objective.py): x_t = (1 − t)·x_0 + t·ε, velocity v = ε − x_0, so data is reached by
integrating dx/dt = v(x, t) from t = 1 (noise) down to t = 0 along a decreasing schedule
1 = t_0 > t_1 > … > t_N = 0 (schedules.sampling_schedule, with the Wan/SD3 shift).

Solvers (all run as one `lax.fori_loop`, so a jitted caller makes no host round trip per step):
  euler      x_{n+1} = x_n + h_n·v(x_n, t_n)                          1st order, N evaluations
  heun       Euler predictor, trapezoidal corrector                   2nd order, 2N evaluations
  multistep  variable-step Adams–Bashforth 2 (the idea behind DPM-Solver++(2M)/UniPC in velocity
             form): x_{n+1} = x_n + h_n·(v_n + h_n/(2h_{n−1})·(v_n − v_{n−1})), Euler first step
                                                                      2nd order, N evaluations
with h_n = t_{n+1} − t_n < 0. The state x is any pytree of float arrays (e.g. {"rgb": …}).
"""

from typing import Callable

import jax
import jax.numpy as jnp

SOLVERS = ("euler", "heun", "multistep")
EVALUATIONS_PER_STEP = {"euler": 1, "heun": 2, "multistep": 1}

VelocityFn = Callable[[object, jax.Array], object]
"""velocity_fn(x, t) -> v: x a pytree of arrays, t a float32 scalar; v a pytree like x."""


def check_solver(solver: str) -> None:
  if solver not in SOLVERS:
    raise ValueError(f"unknown solver {solver!r}; expected one of {list(SOLVERS)}")


def _step(x, h, v):
  """x + h·v over a pytree (h a scalar)."""
  return jax.tree.map(lambda xi, vi: xi + h * vi, x, v)


def integrate(velocity_fn: VelocityFn, x, timesteps, solver: str = "euler"):
  """Integrates dx/dt = velocity_fn(x, t) from timesteps[0] to timesteps[-1].

  Args:
    velocity_fn: see VelocityFn; traced (once per solver evaluation site) inside the loop.
    x: pytree of float arrays, the state at timesteps[0] (pure noise at t = 1 for sampling).
    timesteps: float32 [N + 1], monotone (decreasing for sampling). N is static (its shape).
    solver: one of SOLVERS.
  Returns:
    The state at timesteps[-1], a pytree like x.
  """
  check_solver(solver)
  timesteps = jnp.asarray(timesteps, jnp.float32)
  num_steps = timesteps.shape[0] - 1
  if num_steps < 1:
    raise ValueError(f"need at least one step (timesteps of length >= 2), got {timesteps.shape}")

  if solver == "euler":
    def body(i, x):
      t, t_next = timesteps[i], timesteps[i + 1]
      return _step(x, t_next - t, velocity_fn(x, t))
    return jax.lax.fori_loop(0, num_steps, body, x)

  if solver == "heun":
    def body(i, x):
      t, t_next = timesteps[i], timesteps[i + 1]
      h = t_next - t
      v = velocity_fn(x, t)
      v_next = velocity_fn(_step(x, h, v), t_next)
      mean = jax.tree.map(lambda a, b: 0.5 * (a + b), v, v_next)
      return _step(x, h, mean)
    return jax.lax.fori_loop(0, num_steps, body, x)

  # multistep (AB2 with variable steps): the previous velocity rides in the carry.
  def body(i, carry):
    x, v_prev = carry
    t, t_next = timesteps[i], timesteps[i + 1]
    h = t_next - t
    h_prev = t - timesteps[jnp.maximum(i - 1, 0)]
    ratio = jnp.where(i == 0, 0.0, h / (2.0 * jnp.where(i == 0, 1.0, h_prev)))
    v = velocity_fn(x, t)
    extrapolated = jax.tree.map(lambda a, b: a + ratio * (a - b), v, v_prev)
    return _step(x, h, extrapolated), v
  zeros = jax.tree.map(jnp.zeros_like, x)
  x, _ = jax.lax.fori_loop(0, num_steps, body, (x, zeros))
  return x


def guide(conditional, unconditionals):
  """Classifier-free guidance around the fully conditional prediction.

  v = v_c + Σ_k (s_k − 1)·(v_c − v_k) for branches k with scale s_k, where v_k drops one
  condition (the caption; the control stream). One branch is ordinary CFG,
  v_k + s_k·(v_c − v_k). A branch with s_k = 1 contributes nothing: callers skip evaluating it,
  which makes scale 1 exactly the conditional-only path.

  Args:
    conditional: pytree of arrays (v_c).
    unconditionals: list of (pytree like conditional, scale scalar).
  """
  out = conditional
  for unconditional, scale in unconditionals:
    out = jax.tree.map(lambda o, c, u: o + (scale - 1.0) * (c - u), out, conditional,
                       unconditional)
  return out
