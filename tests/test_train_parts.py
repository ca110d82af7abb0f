"""Unit tests of the trainer's parts: schedules, parameter groups, curriculum, train config
rules, batch sources, fingerprints and safetensors export, multi-host detection, reporting."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.train import curriculum
from unity_jax.train import distributed
from unity_jax.train import export
from unity_jax.train import monitor as monitor_lib
from unity_jax.train import optim
from unity_jax.train import sources
from unity_jax.train import state as state_lib


def smoke_config():
  return config_lib.load_config("configs/tiny.py:smoke")


def lr_at(config, step, stage):
  return float(optim.learning_rate(config, jnp.int32(step), jnp.int32(stage)))


def test_schedule_warmup_cosine_and_stage_overrides():
  config = smoke_config()
  config.stages[0].steps, config.stages[1].steps = 101, 50
  config.train.update(lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
  config.stages[1].lr = 2e-4
  config.stages[1].schedule = "constant"
  config.stages[1].warmup_steps = 0
  config_lib.validate(config)
  np.testing.assert_allclose(lr_at(config, 0, 0), 1e-4, rtol=1e-6)       # 1/10 of the peak
  np.testing.assert_allclose(lr_at(config, 9, 0), 1e-3, rtol=1e-6)       # warmup done
  np.testing.assert_allclose(lr_at(config, 55, 0), 1e-3 * 0.55, rtol=1e-5)  # cosine midpoint
  np.testing.assert_allclose(lr_at(config, 100, 0), 1e-4, rtol=1e-5)     # last step: min ratio
  for step in (101, 120, 150):                                             # stage 1: constant
    np.testing.assert_allclose(lr_at(config, step, 1), 2e-4, rtol=1e-6)


def test_lr_multipliers_by_leaf_path_and_unknown_patterns_fail():
  config = smoke_config()
  config.train.lr_multipliers = (("modality_*", 10.0), ("blocks/*/ffn/*", 0.5))
  params = state_lib.abstract_params(config)
  multipliers = dict(zip(optim.leaf_paths(params), jax.tree.leaves(optim.lr_multipliers(
      config, params))))
  assert multipliers["modality_embed"] == 10.0
  assert multipliers["modality_head/kernel"] == 10.0
  assert multipliers["modality_switcher/fc1/kernel"] == 10.0
  assert multipliers["blocks/block/ffn/up/kernel"] == 0.5
  assert multipliers["blocks/block/self_attn/query/kernel"] == 1.0
  assert multipliers["rgb_head/kernel"] == 1.0
  config.train.lr_multipliers = (("modalty_*", 10.0),)
  with pytest.raises(config_lib.ConfigError, match="modalty_.*match no parameter"):
    optim.lr_multipliers(config, params)


def test_weight_decay_mask_skips_biases_and_norms():
  config = smoke_config()
  params = state_lib.abstract_params(config)
  mask = dict(zip(optim.leaf_paths(params), jax.tree.leaves(optim.weight_decay_mask(config,
                                                                                     params))))
  assert mask["blocks/block/ffn/up/kernel"] and mask["patch_embed/kernel"]
  assert not mask["blocks/block/ffn/up/bias"]
  assert not mask["blocks/block/self_attn/norm_q/scale"]
  assert not mask["text_encoder/final_norm/scale"]


@pytest.mark.parametrize("key, value, message", [
    ("accumulate_steps", 3, "divide train.batch_size"),
    ("nonfinite_policy", "ignore", "must be one of"),
    ("lr", 0.0, "must be > 0"),
    ("schedule", "linear", "must be one of"),
    ("lr_multipliers", (("modality_*",),), "pairs"),
    ("ema_decay", 1.0, r"\[0, 1\)"),
    ("checkpoint_every", 0, ">= 1"),
    ("data_source", "openuni", "data.dir"),
])
def test_train_config_rules(key, value, message):
  config = smoke_config()
  config.train[key] = value
  with pytest.raises(config_lib.ConfigError, match=message) as error:
    config_lib.validate(config)
  assert f"train.{key}" in str(error.value) or key == "data_source"


def test_micro_batch_must_split_over_data_parallel_devices():
  config = smoke_config()
  config.train.accumulate_steps = 4       # micro-batch 2 on 8 data-parallel devices
  with pytest.raises(config_lib.ConfigError, match="micro-batch"):
    config_lib.validate(config, 8)


def test_curriculum_stage_boundaries():
  config = smoke_config()
  config.stages[0].steps, config.stages[1].steps = 3, 4
  assert curriculum.stage_starts(config) == [0, 3]
  assert curriculum.total_steps(config) == 7
  assert [curriculum.stage_of(config, s) for s in range(8)] == [0, 0, 0, 1, 1, 1, 1, 1]
  assert [s for s in range(8) if curriculum.is_stage_end(config, s)] == [3, 7]
  assert "stage2_all" in curriculum.describe(config)


def test_random_source_follows_the_stage_and_splits_over_processes():
  config = smoke_config()
  config.train.batch_size = 8
  stage1 = sources.RandomSource(config, 0).next_batch(5)
  assert set(stage1) == set(sources.batch_shapes(config, 8))
  allowed = {constants.modality_id(m) for m in config.stages[0].modalities}
  assert set(stage1["modality_id"].tolist()) <= allowed
  assert set(stage1["source_id"].tolist()) == {constants.source_id("single_person")}
  stage2 = sources.RandomSource(config, 1).next_batch(5)
  assert np.bincount(stage2["source_id"], minlength=4).tolist() == [2, 2, 2, 2]
  # Two processes' local batches are exactly the halves of the one-process batch.
  halves = [sources.RandomSource(config, 1, process_index=p, process_count=2).next_batch(5)
            for p in range(2)]
  for key, value in stage2.items():
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value)
  again = sources.RandomSource(config, 1).next_batch(5)
  other = sources.RandomSource(config, 1).next_batch(6)
  np.testing.assert_array_equal(again["rgb"], stage2["rgb"])
  assert not np.array_equal(other["rgb"], stage2["rgb"])


def test_fingerprint_and_safetensors_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  tree = {"b": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
          "a": rng.normal(size=(5,)).astype(np.float32)}
  host = export.to_host(tree)
  assert list(host) == ["a", "b/kernel"]
  reordered = dict(reversed(list(host.items())))
  assert export.fingerprint(host) == export.fingerprint(reordered)
  changed = dict(host, a=host["a"] + np.float32(1e-7))
  assert export.fingerprint(changed) != export.fingerprint(host)
  index_path = export.export_safetensors(host, str(tmp_path), kind="ema", step=7,
                                         max_file_bytes=40)
  index = json.loads(open(index_path).read())
  assert index["sha256"] == export.fingerprint(host) and index["step"] == 7
  assert index["tensors"]["b/kernel"] == {"shape": [3, 4], "dtype": "float32",
                                          "file": index["weight_map"]["b/kernel"]}
  assert len(set(index["weight_map"].values())) == 2          # split by max_file_bytes
  loaded = export.load_safetensors(index_path)
  assert export.fingerprint(loaded) == index["sha256"]
  np.testing.assert_array_equal(export.unflatten(loaded)["b"]["kernel"], tree["b"]["kernel"])


def test_multiprocess_environment_detection():
  assert not distributed.detected_multiprocess_env({})
  assert distributed.detected_multiprocess_env({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"})
  assert distributed.detected_multiprocess_env({"SLURM_NTASKS": "4"})
  assert not distributed.detected_multiprocess_env({"SLURM_NTASKS": "1"})
  assert distributed.detected_multiprocess_env({"TPU_WORKER_HOSTNAMES": "h0,h1"})
  assert not distributed.detected_multiprocess_env({"TPU_WORKER_HOSTNAMES": "h0"})
  assert not distributed.maybe_initialize("off")


def test_monitor_writes_count_weighted_window_means(tmp_path):
  stream = io.StringIO()
  monitor = monitor_lib.Monitor(str(tmp_path), total_steps=4, stage_names=["s0"], log_every=2,
                                stream=stream)
  monitor.start(0)
  monitor.record(1, 0, {"loss": 1.0, "loss/modality/depth": 0.0, "count/modality/depth": 0.0})
  monitor.record(2, 0, {"loss": 3.0, "loss/modality/depth": 2.0, "count/modality/depth": 4.0})
  monitor.close()
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
  assert record["step"] == 2 and record["loss"] == 2.0
  assert record["loss/modality/depth"] == 2.0       # the step without depth samples is ignored
  assert "step 2/4 stage 0 (s0) loss 2.0000" in stream.getvalue()
  assert list((tmp_path / "tensorboard").iterdir())


def _step_metrics(loss, skipped=False):
  return {"loss": loss, "grad_norm": float("nan") if skipped else 1.0, "lr": 0.1,
          "nonfinite": float(skipped), "loss/modality/depth": loss, "count/modality/depth": 2.0}


def test_monitor_means_are_nan_aware_numeric_and_count_skipped_steps(tmp_path):
  stream = io.StringIO()
  monitor = monitor_lib.Monitor(str(tmp_path), total_steps=6, stage_names=["s0"], log_every=3,
                                stream=stream)
  monitor.start(0)
  for step, loss in enumerate([1.0, float("nan"), 3.0, float("nan"), float("inf"), float("nan")]):
    monitor.record(step + 1, 0, _step_metrics(loss, skipped=not np.isfinite(loss)))
  monitor.close()
  text = (tmp_path / "metrics.jsonl").read_text()
  assert "NaN" not in text and '"nan"' not in text and "Infinity" not in text
  first, second = [json.loads(line) for line in text.splitlines()]
  assert first["loss"] == 2.0 and first["loss/modality/depth"] == 2.0   # the NaN step left out
  assert first["grad_norm"] == 1.0 and first["skipped_steps"] == 1
  assert second["loss"] is None and second["grad_norm"] is None and second["skipped_steps"] == 3
  assert second["lr"] == pytest.approx(0.1)   # finite metrics of skipped steps still count
  assert "step 6/6 stage 0 (s0) loss nan" in stream.getvalue() and "(3 skipped)" in stream.getvalue()


def _tensorboard_scalars(directory):
  """{tag: [steps]} as TensorBoard loads them: files in name order; a SessionLog START at step
  s (purge_step) drops the events of steps >= s read before it."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for name in sorted(os.listdir(directory)):
    data = (directory / name).read_bytes()
    offset = 0
    while offset < len(data):
      length = int.from_bytes(data[offset:offset + 8], "little")
      events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
  scalars = {}
  for event in events:
    if event.HasField("session_log") and event.session_log.status == event.session_log.START:
      scalars = {tag: [s for s in steps if s < event.step] for tag, steps in scalars.items()}
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append(event.step)
  return scalars


def test_monitor_resume_replaces_tensorboard_steps_instead_of_duplicating(tmp_path):
  def run(first_step, last_step, resumed_from=None):
    monitor = monitor_lib.Monitor(str(tmp_path), total_steps=6, stage_names=["s0"], log_every=1,
                                  stream=io.StringIO())
    if resumed_from is not None:
      monitor.truncate_after(resumed_from)
    monitor.start(first_step - 1)
    for step in range(first_step, last_step + 1):
      monitor.record(step, 0, _step_metrics(float(step)))
    monitor.close()
  run(1, 5)              # killed after step 5, last checkpoint at step 3
  run(4, 6, resumed_from=3)
  steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5, 6]
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  assert scalars["loss"] == [1, 2, 3, 4, 5, 6] and scalars["skipped_steps"] == [1, 2, 3, 4, 5, 6]
