"""Sampling a model trained on precomputed text: the Pipeline embeds prompts with the hook
precompute used (the stored bytes, bit for bit), and the 5B recipe end to end on a CPU.

The slow test runs `configs/unity_5b.py:mini` (the preset's Wan2.2 VAE, precomputed umT5 text,
chunked attention, remat; small widths, random weights) through the command lines of
docs/launching.md: synth -> precompute -> train (both stages) -> unity-sample -> unity-eval.
"""

import io
import json
import os

import jax
import numpy as np
import pytest

import process_utils

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax import model as model_lib
from unity_jax.data import fakes
from unity_jax.data import precompute
from unity_jax.data import precomputed
from unity_jax.data import writer
from unity_jax.sample import pipeline as pipeline_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, H, W = 5, 8, 8


def make_config(data_dir, dtype="float32"):
  config = config_lib.load_config(os.path.join(REPO, "configs/tiny.py:smoke"))
  config.data.update(num_frames=T, height=H, width=W, caption_len=48, prompt_len=80,
                     dir=str(data_dir), precomputed="pre")
  config.train.data_source = "openuni"
  config.model.text_encoder = "precomputed"
  config.text.encoder = "fake"
  config.precompute.dtype = dtype
  return config


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def store(request, tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  clips = [fakes.fake_clip(seed=i, source=s, num_frames=T, height=H, width=W, with_gt=False)
           for s in constants.SOURCES for i in range(1)]
  writer.write_clips(clips, str(root), "train", clips_per_shard=2)
  config = make_config(root, request.param)
  precompute.run(config, str(root), str(root / "pre"))
  return config, clips, precomputed.open_precomputed(str(root / "pre"), "train")


def test_pipeline_embeds_prompts_as_precompute_stored_them(store):
  config, clips, opened = store
  pipe = pipeline_lib.Pipeline(config, model_lib.init_params(config, jax.random.key(0)),
                               mesh=None)
  got = precomputed.read_clip(opened, 0)
  clip = next(c for c in clips if c["id"] == got["id"])
  modality = "segmentation"
  inputs, _ = pipe.prepare_inputs("joint", [clip["caption"]], modality,
                                  targets=clip["segmentation_targets"])
  as32 = lambda x: np.asarray(x, np.float32)
  np.testing.assert_array_equal(inputs["caption"]["embedding"][0], as32(got["caption_embedding"]))
  assert inputs["caption"]["mask"][0].sum() == got["caption_length"]
  index = constants.modality_id(modality)
  np.testing.assert_array_equal(inputs["prompt"]["embedding"][0, 0],
                                as32(got["prompt_embedding"][index]))
  assert inputs["prompt"]["mask"][0, 0].sum() == got["prompt_length"][index]
  empty = opened.empty_text()
  np.testing.assert_array_equal(inputs["empty_caption"]["embedding"][0],
                                as32(empty["caption_embedding"]))
  out = pipe.generate(clip["caption"], modality="depth", num_steps=2, guidance_scale=2.0)
  assert out.rgb.shape == (T, H, W, 3) and out.modality.shape == (T, H, W, 3)


def test_prompts_longer_than_the_configured_length_warn(tmp_path):
  from unity_jax.sample import text_embedder  # pylint: disable=g-import-not-at-top
  config = make_config(tmp_path)
  config.data.update(caption_len=12, prompt_len=24)
  embedder = text_embedder.PromptEmbedder(config)
  with pytest.warns(UserWarning, match=r"longer than data\.caption_len=12"):
    embedder.captions(["a person in a red coat walks past two boxes"])
  with pytest.warns(UserWarning, match=r"longer than data\.prompt_len=24"):
    embedder.prompts("segmentation", ["two persons and an orange"])
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    embedder.captions(["short"])


def test_precomputed_training_needs_no_vae_weights_sampling_does(tmp_path):
  from unity_jax.model import codec as codec_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(REPO, "configs/unity_5b.py:mini"))
  config.data.update(dir=str(tmp_path), precomputed="precomputed")
  config_lib.validate(config)   # codec.weights="" is fine: the step never runs the codec
  assert codec_lib.training_codec(config) is None
  with pytest.raises(ValueError, match="codec.weights"):
    codec_lib.make_codec(config)   # what Pipeline uses: sampling decodes through the VAE
  config.data.update(dir="", precomputed="")   # random batches of videos: the step encodes
  with pytest.raises(config_lib.ConfigError, match="codec.weights"):
    config_lib.validate(config)


def _run(args, timeout, env):
  """A command line in a subprocess (killed by its own pid on overrun); returns stdout."""
  rc, stdout, stderr = process_utils.run_module(args, timeout=timeout, env=env, cwd=REPO)
  assert rc == 0, f"{args[:2]} failed:\n{stderr[-4000:]}"
  return stdout


def _tiny_umt5(out_dir, sentences):
  """A random 2-layer UMT5EncoderModel (d_model 32) and a SentencePiece model trained on the
  synthetic captions: the umT5 path's files, small."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  spm = pytest.importorskip("sentencepiece")
  torch.manual_seed(0)
  transformers.UMT5EncoderModel(transformers.UMT5Config(
      vocab_size=160, d_model=32, d_kv=8, num_heads=4, num_layers=2, d_ff=64,
      feed_forward_proj="gated-gelu")).save_pretrained(os.path.join(out_dir, "text_encoder"))
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=150,
      hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  path = os.path.join(out_dir, "spiece.model")
  with open(path, "wb") as f:
    f.write(buffer.getvalue())
  return os.path.join(out_dir, "text_encoder"), path


@pytest.mark.slow  # a few minutes: five command lines, each compiling its own programs.
def test_unity_5b_mini_recipe_end_to_end(tmp_path):
  pytest.importorskip("diffusers")
  from unity_jax.data import prompts  # pylint: disable=g-import-not-at-top
  from unity_jax.wan import random_checkpoint  # pylint: disable=g-import-not-at-top
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  spec = "configs/unity_5b.py:mini"
  vae = random_checkpoint.write_vae(str(tmp_path / "vae"), "2.2")
  data = str(tmp_path / "data")
  _run(["unity_jax.data.cli", "synth", "--config", spec, "--out", data, "--clips", "8"], 300, env)
  _run(["unity_jax.data.cli", "synth", "--config", spec, "--out", data, "--clips", "4",
        "--split", "eval", "--with-gt", "--seed", "1000"], 300, env)
  sentences = [p for m in constants.MODALITIES for p in [prompts.modality_prompt(m, "a person")]]
  sentences += ["a person walks across a sunny plaza while the camera pans left"] * 4
  encoder_dir, tokenizer = _tiny_umt5(str(tmp_path), sentences * 5)
  overrides = [f"--config.codec.weights={vae}", f"--config.text.encoder_dir={encoder_dir}",
               f"--config.text.tokenizer_path={tokenizer}"]
  _run(["unity_jax.data.cli", "precompute", "--data", data, "--config", spec, "--split",
        "train", *overrides], 600, env)
  workdir = str(tmp_path / "run")
  _run(["unity_jax.train.cli", "--config", spec, "--workdir", workdir,
        f"--config.data.dir={data}", "--config.data.precomputed=precomputed", *overrides],
       900, env)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
  assert losses and all(np.isfinite(losses)), losses
  out = str(tmp_path / "sample.npy")
  _run(["unity_jax.sample.cli", "--workdir", workdir, "--task", "joint", "--modality", "depth",
        "--prompt", "a person walks", "--steps", "2", "--out", out], 300, env)
  assert os.path.getsize(out) > 0
  report = str(tmp_path / "eval.json")
  _run(["unity_jax.eval.cli", "--workdir", workdir, "--data", data, "--clips", "2", "--steps",
        "2", "--batch-size", "2", "--modalities", "depth", "--out", report], 900, env)
  with open(report) as f:
    assert json.load(f)
