"""Training on `unity-data precompute` output (config.data.precomputed, latent_examples.py).

The same clips in the same order and draws as the shard path, latents passed through the step
without the codec, stored text embeddings with the stored empty caption for dropout, flip
augmentation refused. The slow test trains 20 steps both ways and compares fingerprints.
"""

import io
import json

import jax
import numpy as np
import pytest

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.data import fakes
from unity_jax.data import inspect as inspect_lib
from unity_jax.data import latent_examples
from unity_jax.data import pipeline
from unity_jax.data import precompute
from unity_jax.data import writer
from unity_jax.flow import batch as batch_lib
from unity_jax.flow import objective
from unity_jax.model import codec as codec_lib
from unity_jax.train import trainer as trainer_lib

T, H, W = 5, 8, 8
CLIPS_PER_SOURCE = 4
TEXT_STORE = "pre_text"


def make_config(data_dir, precomputed="", text=False):
  """tiny:smoke at 5x8x8 over `data_dir`; `text`: fake-encoder embeddings instead of ids."""
  config = config_lib.load_config("configs/tiny.py:smoke")
  config.data.update(num_frames=T, height=H, width=W, caption_len=48, prompt_len=80,
                     dir=str(data_dir), precomputed=precomputed)
  config.train.data_source = "openuni"
  if text:
    config.model.text_encoder = "precomputed"
    config.text.encoder = "fake"
  return config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Shards (clip 0 of each source has no modality: RGB-only samples) precomputed twice: pixel
  latents only (builtin text) under precomputed/, latents + fake embeddings under pre_text/."""
  root = tmp_path_factory.mktemp("data")
  clips = []
  for source in constants.SOURCES:
    for i in range(CLIPS_PER_SOURCE):
      clip = fakes.fake_clip(seed=i, source=source, num_frames=T, height=H, width=W,
                             with_gt=False)
      if i == 0:
        clip["available"] = {m: False for m in constants.MODALITIES}
      clips.append(clip)
  writer.write_clips(clips, str(root), "train", clips_per_shard=3)
  precompute.run(make_config(root), str(root))
  precompute.run(make_config(root, text=True), str(root), str(root / TEXT_STORE))
  return root


def _batches(config, stage, count):
  iterator = pipeline.make_train_iterator(config, stage)
  try:
    return [next(iterator) for _ in range(count)]
  finally:
    iterator.close()


@pytest.mark.parametrize("stage", [0, 1])
def test_latent_batches_are_the_encoded_shard_batches(data, stage):
  shards = _batches(make_config(data), stage, 4)
  latents = _batches(make_config(data, "precomputed"), stage, 4)
  codec = codec_lib.make_codec(make_config(data))
  encode = jax.jit(batch_lib.to_latent_batch)   # As in the step (XLA, not numpy, arithmetic).
  rgb_only = 0
  for shard_batch, latent_batch in zip(shards, latents):
    assert set(latent_batch) == set(shard_batch) - {"rgb", "modality_video"} | {
        "rgb_latents", "modality_latents"}
    assert pipeline.batch_counts(latent_batch) == pipeline.batch_counts(shard_batch)
    expected = jax.device_get(encode(shard_batch, codec))
    got = batch_lib.to_latent_batch(latent_batch, codec)
    valid = expected["modality_id"][:, 0] >= 0
    rgb_only += int((~valid).sum())
    np.testing.assert_array_equal(got["rgb"], expected["rgb"])
    np.testing.assert_array_equal(got["modality"][valid], expected["modality"][valid])
    for key in ("modality_id", "task_id", "source_id"):
      np.testing.assert_array_equal(got[key], expected[key])
    for key in ("caption", "prompt"):
      for name in ("tokens", "mask"):
        np.testing.assert_array_equal(got[key][name], expected[key][name])
  assert rgb_only > 0 or stage == 0  # Stage 1 mixes all sources, so RGB-only clips appear.


def test_flip_augment_is_refused_naming_both_keys(data):
  config = make_config(data, "precomputed")
  config.data.flip_augment = True
  with pytest.raises(config_lib.ConfigError, match="flip_augment.*data.precomputed"):
    config_lib.validate(config)
  config = make_config(data, text=True)   # Embedding-based model without stored embeddings.
  with pytest.raises(config_lib.ConfigError, match="data.precomputed"):
    config_lib.validate(config)


def test_store_made_with_another_config_is_refused(data):
  config = make_config(data, TEXT_STORE)   # Stored with embeddings; the config wants ids.
  with pytest.raises(ValueError, match="text_encoder"):
    pipeline.make_train_iterator(config, 0)


def test_embedding_batches_and_dropout_use_the_stored_empty_text(data):
  config = make_config(data, TEXT_STORE, text=True)
  batch = _batches(config, 1, 2)[1]
  dim = config.model.text_dim
  assert batch["caption_embedding"].shape == (8, 48, dim)
  assert batch["modality_prompt_embedding"].shape == (8, 80, dim)
  assert "caption_tokens" not in batch and "modality_prompt_tokens" not in batch
  # Masks come from the stored lengths; the embedding is zero past them.
  lengths = batch["caption_mask"].sum(1)
  assert (lengths > 2).all()
  assert not np.abs(batch["caption_embedding"][~batch["caption_mask"]]).any()
  empty = latent_examples.empty_caption(config)
  assert empty["mask"].sum() == 2 and empty["embedding"].shape == (48, dim)
  latent = batch_lib.to_latent_batch(batch, None)
  dropped = objective.drop_captions(jax.random.key(0), latent["caption"], 1.0, empty)
  np.testing.assert_array_equal(np.asarray(dropped["embedding"]),
                                np.broadcast_to(empty["embedding"], (8, 48, dim)))
  np.testing.assert_array_equal(np.asarray(dropped["mask"]),
                                np.broadcast_to(empty["mask"], (8, 48)))
  # RGB-only samples get the stored empty prompt.
  rgb_only = batch["modality_id"] < 0
  if rgb_only.any():
    assert (batch["modality_prompt_mask"][rgb_only].sum(1) == 2).all()


def test_inspect_counts_precomputed_batches_like_shards(data, monkeypatch):
  # The 5x8x8 geometry of the fixture (inspect takes no --config.KEY overrides).
  configs = iter([make_config(data), make_config(data)])
  monkeypatch.setattr(inspect_lib.config_lib, "load_config", lambda spec: next(configs))
  outputs = []
  for extra in ([], ["--precomputed", "precomputed"]):
    out = io.StringIO()
    assert inspect_lib.main(["--data", str(data), "--config", "configs/tiny.py:smoke",
                             "--stage", "1", "--batches", "2", "--json", *extra], out) == 0
    outputs.append([json.loads(line) for line in out.getvalue().splitlines()
                    if line.startswith('{"batch"')])
  assert outputs[0] == outputs[1] and len(outputs[0]) == 2


@pytest.mark.slow  # ≈70 s on the shared 2-core CPU (one compile + 8 steps).
def test_training_on_precomputed_text_embeddings_loss_falls(data, tmp_path):
  config = make_config(data, TEXT_STORE, text=True)
  config.stages = config.stages[1:]
  config.stages[0].steps = 8
  config.train.update(lr=1e-2, warmup_steps=0, log_every=2, export="none")
  result = trainer_lib.Trainer(config, str(tmp_path), devices=jax.devices()[:1]).run()
  assert result.status == "completed" and result.step == 8
  with open(tmp_path / "metrics.jsonl") as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
  assert len(losses) == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.slow
def test_training_on_precomputed_latents_gives_the_shard_fingerprint(data, tmp_path):
  """20 tiny:smoke steps (both stages) from shards through the pixel codec vs from stored
  float32 pixel latents: the same params and EMA, bit for bit."""
  summaries = {}
  for name, precomputed in (("shards", ""), ("latents", "precomputed")):
    config = make_config(data, precomputed)
    config.train.export = "none"
    result = trainer_lib.Trainer(config, str(tmp_path / name), devices=jax.devices()[:1]).run()
    assert result.status == "completed" and result.step == 20
    summaries[name] = result.summary
  for key in ("params_sha256", "ema_sha256"):
    assert summaries["latents"][key] == summaries["shards"][key], summaries
