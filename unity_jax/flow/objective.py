"""The UnityVideo training objective: dynamic task routing + rectified-flow matching.

Per sample one task is drawn (paper §3.1, "dynamic noising"):
  control  (id 0): modality clean (t_m = 0), RGB noised, loss on RGB tokens only;
  estimate (id 1): RGB clean (t_r = 0), modality noised, loss on modality tokens only;
  joint    (id 2): both noised (independent t per stream, or one shared t), loss on both.
Samples without a modality stream (modality_id = -1) train RGB generation (the T2V baseline)
whatever their task id; their loss is reported as `loss/task/t2v` (constants.T2V).
Rectified flow: x_t = (1 − t)·x_0 + t·ε, target v = ε − x_0, loss ‖u_θ(x_t) − v‖².
"""

import jax
import jax.numpy as jnp

from unity_jax import constants
from unity_jax.flow import schedules
from unity_jax.model import text as text_lib

CONTROL, ESTIMATE, JOINT = (constants.task_id(t) for t in ("control", "estimate", "joint"))


def sample_tasks(rng, batch_size: int, task_probs: dict) -> jnp.ndarray:
  """int32 [B] task ids drawn from {name: probability} (order of constants.TASKS)."""
  probs = jnp.asarray([task_probs[name] for name in constants.TASKS], jnp.float32)
  return jax.random.choice(rng, len(constants.TASKS), (batch_size,), p=probs).astype(jnp.int32)


def interpolate(x0, noise, t):
  """x_t = (1 − t)·x_0 + t·ε with t broadcast from [B] or [B, S] over trailing axes."""
  t = t.reshape(t.shape + (1,) * (x0.ndim - t.ndim))
  return (1.0 - t) * x0 + t * noise


def drop_captions(rng, caption: dict, rate: float, empty: dict | None = None) -> dict:
  """Replaces each sample's caption by the empty caption with probability `rate` (for CFG).

  For embeddings, `empty` is the text encoder's empty caption {"embedding": [Lc, D], "mask":
  bool [Lc]} (stored by `unity-data precompute`, latent_examples.empty_caption); without it
  (embeddings not from a store) a zero embedding with one attended token stands in.
  """
  batch = caption["mask"].shape[0]
  drop = jax.random.bernoulli(rng, rate, (batch,))
  if "tokens" in caption:
    length = caption["tokens"].shape[1]
    empty_tokens, empty_mask = text_lib.tokenize([""], length)
    pick = lambda full, empty: jnp.where(drop[:, None], jnp.asarray(empty), full)
    return {"tokens": pick(caption["tokens"], empty_tokens),
            "mask": pick(caption["mask"], empty_mask)}
  if empty is not None:
    embedding = jnp.asarray(empty["embedding"], caption["embedding"].dtype)
    return {"embedding": jnp.where(drop[:, None, None], embedding, caption["embedding"]),
            "mask": jnp.where(drop[:, None], jnp.asarray(empty["mask"]), caption["mask"])}
  empty_mask = jnp.zeros_like(caption["mask"]).at[:, 0].set(True)
  return {"embedding": jnp.where(drop[:, None, None], 0.0, caption["embedding"]),
          "mask": jnp.where(drop[:, None], empty_mask, caption["mask"])}


def make_noisy_inputs(rng, batch: dict, objective,
                      empty_caption: dict | None = None) -> tuple[dict, dict, dict]:
  """Routes tasks, samples timesteps and noise, and builds model inputs and targets.

  Args:
    batch: latent batch with rgb [B, F, H, W, C], modality [B, S, F, H, W, C],
      modality_id int [B, S], task_id int [B], caption, prompt (see UnityDiT).
    objective: config.objective.
    empty_caption: the stored empty caption embedding for dropout (see drop_captions).
  Returns:
    (model_inputs, targets {"rgb", "modality"}, weights {"rgb": [B], "modality": [B, S]}).
  """
  rng_t_rgb, rng_t_mod, rng_noise_rgb, rng_noise_mod, rng_drop = jax.random.split(rng, 5)
  rgb, modality, task = batch["rgb"], batch["modality"], batch["task_id"]
  valid = batch["modality_id"] >= 0                                    # [B, S]
  has_modality = valid.any(axis=1)
  sample_t = lambda key, shape, shift: schedules.sample_timesteps(
      key, shape, sampling=objective.timestep_sampling, logit_mean=objective.logit_mean,
      logit_std=objective.logit_std, shift=shift)
  t_rgb = sample_t(rng_t_rgb, task.shape, objective.shift)
  # Estimation may shift its modality timesteps further toward noise (objective.estimate_shift,
  # 0 = objective.shift): near t = 1 the modality can only be read off the clean RGB stream.
  estimate_shift = objective.estimate_shift or objective.shift
  t_mod = sample_t(rng_t_mod, valid.shape,
                   jnp.where((task == ESTIMATE)[:, None], estimate_shift, objective.shift))
  if objective.timesteps == "shared":
    t_mod = jnp.broadcast_to(t_rgb[:, None], valid.shape)

  rgb_noised = (task != ESTIMATE) | ~has_modality                       # [B]
  mod_noised = ((task != CONTROL)[:, None]) & valid                     # [B, S]
  t_rgb = jnp.where(rgb_noised, t_rgb, 0.0)
  t_mod = jnp.where(mod_noised, t_mod, 0.0)

  noise_rgb = jax.random.normal(rng_noise_rgb, rgb.shape, rgb.dtype)
  noise_mod = jax.random.normal(rng_noise_mod, modality.shape, modality.dtype)
  # Conditioning timesteps: per stream, or (release variant) the noised stream's shared t.
  cond_t_rgb, cond_t_mod = t_rgb, t_mod
  if objective.timesteps == "shared":
    shared = jnp.maximum(t_rgb, t_mod.max(axis=1))
    cond_t_rgb, cond_t_mod = shared, jnp.broadcast_to(shared[:, None], t_mod.shape)
  inputs = dict(
      rgb=interpolate(rgb, noise_rgb, t_rgb), t_rgb=cond_t_rgb,
      caption=drop_captions(rng_drop, batch["caption"], objective.caption_dropout,
                            empty_caption),
      modality=interpolate(modality, noise_mod, t_mod), modality_id=batch["modality_id"],
      t_modality=cond_t_mod, prompt=batch["prompt"])
  targets = {"rgb": noise_rgb - rgb, "modality": noise_mod - modality}
  weights = {"rgb": rgb_noised.astype(jnp.float32), "modality": mod_noised.astype(jnp.float32)}
  return inputs, targets, weights


def flow_loss(predictions: dict, targets: dict, weights: dict, batch: dict):
  """Weighted flow-matching loss and per-task / per-modality sums.

  Returns (loss, metrics): loss is the mean over samples of each sample's mean squared error
  over its supervised streams; metrics hold `sum/…` and `count/…` pairs (aggregate over
  micro-batches or hosts by adding, then divide with `summarize`).
  """
  mse = lambda p, t: jnp.square(p - t).mean(axis=(-4, -3, -2, -1))   # over F, H, W, C
  rgb_mse = mse(predictions["rgb"], targets["rgb"])                     # [B]
  mod_mse = mse(predictions["modality"], targets["modality"])            # [B, S]
  w_rgb, w_mod = weights["rgb"], weights["modality"]
  per_sample = (w_rgb * rgb_mse + (w_mod * mod_mse).sum(1)) / jnp.maximum(
      w_rgb + w_mod.sum(1), 1.0)
  loss = per_sample.mean()

  metrics = {"sum/loss": per_sample.sum(), "count/loss": jnp.float32(per_sample.shape[0]),
             "sum/rgb": (w_rgb * rgb_mse).sum(), "count/rgb": w_rgb.sum()}
  # RGB-only samples carry a task id (the pipeline routes them as control) but no condition:
  # they are text-to-video, so they get their own label instead of diluting control's loss.
  has_modality = (batch["modality_id"] >= 0).any(axis=1)               # [B]
  for task_index, task in enumerate(constants.TASKS):
    in_task = ((batch["task_id"] == task_index) & has_modality).astype(jnp.float32)
    metrics[f"sum/task/{task}"] = (in_task * per_sample).sum()
    metrics[f"count/task/{task}"] = in_task.sum()
  is_t2v = (~has_modality).astype(jnp.float32)
  metrics[f"sum/task/{constants.T2V}"] = (is_t2v * per_sample).sum()
  metrics[f"count/task/{constants.T2V}"] = is_t2v.sum()
  for modality_index, modality in enumerate(constants.MODALITIES):
    is_modality = (batch["modality_id"] == modality_index).astype(jnp.float32) * w_mod
    metrics[f"sum/modality/{modality}"] = (is_modality * mod_mse).sum()
    metrics[f"count/modality/{modality}"] = is_modality.sum()
  return loss, metrics


def summarize(metrics: dict) -> dict:
  """`sum/x` and `count/x` pairs -> `loss/x` means (x = loss gives `loss`); counts kept."""
  out = {}
  for key, value in metrics.items():
    if key.startswith("sum/"):
      name = key[4:]
      count = metrics["count/" + name]
      out["loss" if name == "loss" else "loss/" + name] = value / jnp.maximum(count, 1.0)
      if name != "loss":
        out["count/" + name] = count
    elif not key.startswith("count/"):
      out[key] = value
  return out


def loss_fn(params, apply_fn, batch: dict, rng, objective):
  """Task routing + noising + forward + loss. Returns (loss, metrics) — differentiable."""
  inputs, targets, weights = make_noisy_inputs(rng, batch, objective)
  rgb_velocity, modality_velocity = apply_fn({"params": params}, **inputs)
  predictions = {"rgb": rgb_velocity, "modality": modality_velocity}
  return flow_loss(predictions, targets, weights, batch)
