"""Dynamic task routing, timesteps and the rectified-flow loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.flow import batch as batch_lib
from unity_jax.flow import objective, schedules
from unity_jax.model import text
from unity_jax.model.codec import make_codec

CONTROL, ESTIMATE, JOINT = objective.CONTROL, objective.ESTIMATE, objective.JOINT


def _latent_batch(task_ids, modality_ids, timesteps="independent"):
  config = config_lib.load_config("configs/tiny.py:smoke")
  config.objective.timesteps = timesteps
  batch = batch_lib.random_pipeline_batch(config, len(task_ids), seed=0)
  batch["task_id"] = np.asarray(task_ids, np.int32)
  batch["modality_id"] = np.asarray(modality_ids, np.int32)
  return batch_lib.to_latent_batch(batch, make_codec(config)), config


def test_clean_streams_are_not_noised_and_get_zero_loss_weight():
  tasks = [CONTROL, ESTIMATE, JOINT, ESTIMATE, JOINT]
  ids = [0, 1, 2, -1, -1]
  batch, config = _latent_batch(tasks, ids)
  inputs, targets, weights = objective.make_noisy_inputs(jax.random.key(0), batch,
                                                         config.objective)
  np.testing.assert_array_equal(weights["rgb"], [1, 0, 1, 1, 1])       # RGB-only: RGB trained.
  np.testing.assert_array_equal(weights["modality"][:, 0], [0, 1, 1, 0, 0])
  t_rgb, t_mod = np.asarray(inputs["t_rgb"]), np.asarray(inputs["t_modality"][:, 0])
  assert t_rgb[1] == 0 and t_mod[0] == 0 and (t_rgb[[0, 2, 3, 4]] > 0).all()
  assert (t_mod[[1, 2]] > 0).all()
  # Clean streams enter the model exactly as the data.
  np.testing.assert_array_equal(inputs["modality"][0], batch["modality"][0])
  np.testing.assert_array_equal(inputs["rgb"][1], batch["rgb"][1])
  # The loss ignores predictions for unsupervised streams entirely.
  zeros = {k: jnp.zeros_like(v) for k, v in targets.items()}
  base, _ = objective.flow_loss(zeros, targets, weights, batch)
  junk = {"rgb": zeros["rgb"].at[1].set(1e3), "modality": zeros["modality"].at[0].set(1e3)}
  junk_loss, _ = objective.flow_loss(junk, targets, weights, batch)
  assert float(junk_loss) == pytest.approx(float(base), rel=1e-6)


def test_interpolation_and_velocity_target():
  x0, noise = jnp.full((2, 1, 1, 1, 1), 3.0), jnp.full((2, 1, 1, 1, 1), -1.0)
  xt = objective.interpolate(x0, noise, jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(xt.ravel(), [3.0, -1.0])
  np.testing.assert_allclose(objective.interpolate(x0, noise, jnp.array([0.25, 0.25])).ravel(),
                             [2.0, 2.0])
  # d x_t / d t = noise - x0: the velocity target.
  dxdt = jax.jacfwd(lambda t: objective.interpolate(x0[:1], noise[:1], t).ravel())(
      jnp.array([0.3]))
  np.testing.assert_allclose(dxdt.ravel(), (noise - x0)[0].ravel())


def test_task_frequencies_match_config():
  probs = {"control": 0.2, "estimate": 0.3, "joint": 0.5}
  n = 20000
  tasks = np.asarray(objective.sample_tasks(jax.random.key(3), n, probs))
  for index, name in enumerate(constants.TASKS):
    p = probs[name]
    assert abs((tasks == index).mean() - p) < 4 * np.sqrt(p * (1 - p) / n), name


def test_timestep_shift_and_sampling():
  t = jnp.linspace(0, 1, 11)
  np.testing.assert_allclose(schedules.shift_timesteps(t, 1.0), t, atol=1e-7)
  shifted = schedules.shift_timesteps(t, 5.0)
  assert float(shifted[0]) == 0 and float(shifted[-1]) == pytest.approx(1.0)
  assert bool(jnp.all(shifted >= t)) and bool(jnp.all(jnp.diff(shifted) > 0))
  assert float(schedules.shift_timesteps(jnp.array(0.5), 5.0)) == pytest.approx(5 / 6)
  for sampling in ("uniform", "logit_normal"):
    samples = schedules.sample_timesteps(jax.random.key(0), (4000,), sampling=sampling)
    assert 0 < float(samples.min()) and float(samples.max()) < 1
    assert abs(float(samples.mean()) - 0.5) < 0.03
  with pytest.raises(ValueError, match="unknown timestep sampling"):
    schedules.sample_timesteps(jax.random.key(0), (2,), sampling="cosine")
  schedule = schedules.sampling_schedule(4, shift=3.0)
  assert schedule.shape == (5,) and float(schedule[0]) == 1.0 and float(schedule[-1]) == 0.0


def test_shared_timesteps_variant():
  batch, config = _latent_batch([JOINT, ESTIMATE, CONTROL], [0, 1, 2], timesteps="shared")
  inputs, _, weights = objective.make_noisy_inputs(jax.random.key(1), batch, config.objective)
  # One timestep conditions both streams; the clean stream is still clean and unsupervised.
  np.testing.assert_allclose(inputs["t_rgb"], inputs["t_modality"][:, 0])
  np.testing.assert_array_equal(inputs["rgb"][1], batch["rgb"][1])
  np.testing.assert_array_equal(weights["rgb"], [1, 0, 1])


def test_caption_dropout_replaces_with_the_empty_caption():
  tokens, mask = text.tokenize(["a long caption about a red ball"] * 4000, 40)
  dropped = objective.drop_captions(jax.random.key(0), {"tokens": tokens, "mask": mask}, 0.1)
  empty_tokens, empty_mask = text.tokenize([""], 40)
  is_empty = np.all(np.asarray(dropped["tokens"]) == empty_tokens, axis=1)
  assert abs(is_empty.mean() - 0.1) < 4 * np.sqrt(0.09 / 4000)
  np.testing.assert_array_equal(np.asarray(dropped["mask"])[is_empty][0], empty_mask[0])
  kept = np.asarray(dropped["tokens"])[~is_empty]
  np.testing.assert_array_equal(kept, tokens[: len(kept)])


def test_per_task_and_per_modality_metrics():
  batch, config = _latent_batch([CONTROL, ESTIMATE, JOINT, JOINT], [0, 1, 1, -1])
  inputs, targets, weights = objective.make_noisy_inputs(jax.random.key(2), batch,
                                                         config.objective)
  predictions = {k: jnp.zeros_like(v) for k, v in targets.items()}
  loss, metrics = objective.flow_loss(predictions, targets, weights, batch)
  summary = objective.summarize(metrics)
  mse = lambda x: float(jnp.square(x).mean())
  rgb = [mse(targets["rgb"][i]) for i in range(4)]
  mod = [mse(targets["modality"][i]) for i in range(4)]
  per_sample = [rgb[0], mod[1], (rgb[2] + mod[2]) / 2, rgb[3]]
  assert float(loss) == pytest.approx(np.mean(per_sample), rel=1e-5)
  assert float(summary["loss"]) == pytest.approx(np.mean(per_sample), rel=1e-5)
  assert float(summary["loss/task/control"]) == pytest.approx(per_sample[0], rel=1e-5)
  # Sample 3 is RGB-only: text-to-video, not joint (its routing task id).
  assert float(summary["loss/task/joint"]) == pytest.approx(per_sample[2], rel=1e-5)
  assert float(summary["loss/task/t2v"]) == pytest.approx(per_sample[3], rel=1e-5)
  assert float(summary["loss/modality/flow"]) == pytest.approx(np.mean(mod[1:3]), rel=1e-5)
  assert float(summary["count/modality/depth"]) == 0.0  # Control: depth stream unsupervised.
  assert float(summary["loss/rgb"]) == pytest.approx(np.mean([rgb[0], rgb[2], rgb[3]]), rel=1e-5)


def test_estimate_shift_moves_only_estimation_timesteps_toward_noise():
  tasks = [ESTIMATE, JOINT] * 4
  batch, config = _latent_batch(tasks, [0] * len(tasks))
  config.objective.update(shift=1.0, estimate_shift=0.0)
  plain, _, _ = objective.make_noisy_inputs(jax.random.key(4), batch, config.objective)
  config.objective.estimate_shift = 10.0
  shifted, _, _ = objective.make_noisy_inputs(jax.random.key(4), batch, config.objective)
  t_plain, t_shifted = (np.asarray(x["t_modality"][:, 0]) for x in (plain, shifted))
  is_estimate = np.asarray(tasks) == ESTIMATE
  # Same draws: estimation's modality timesteps get the shift, every other timestep is unchanged.
  np.testing.assert_allclose(t_shifted[is_estimate],
                             schedules.shift_timesteps(t_plain[is_estimate], 10.0), rtol=1e-5)
  np.testing.assert_array_equal(t_shifted[~is_estimate], t_plain[~is_estimate])
  np.testing.assert_array_equal(shifted["t_rgb"], plain["t_rgb"])


def test_rgb_only_samples_have_their_own_t2v_label():
  # The pipeline routes RGB-only samples as control (sampling.RGB_ONLY_TASK); their loss must
  # not be counted as control, which is conditional generation from a clean modality.
  batch, config = _latent_batch([CONTROL, CONTROL, CONTROL], [0, -1, -1])
  inputs, targets, weights = objective.make_noisy_inputs(jax.random.key(3), batch,
                                                         config.objective)
  predictions = {k: jnp.zeros_like(v) for k, v in targets.items()}
  _, metrics = objective.flow_loss(predictions, targets, weights, batch)
  summary = objective.summarize(metrics)
  rgb = [float(jnp.square(targets["rgb"][i]).mean()) for i in range(3)]
  assert float(summary["count/task/control"]) == 1.0
  assert float(summary["loss/task/control"]) == pytest.approx(rgb[0], rel=1e-5)
  assert float(summary["count/task/t2v"]) == 2.0
  assert float(summary["loss/task/t2v"]) == pytest.approx(np.mean(rgb[1:]), rel=1e-5)
  assert set(constants.LOSS_TASKS) == {k[len("count/task/"):] for k in summary
                                       if k.startswith("count/task/")}
