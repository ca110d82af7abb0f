"""`unity-data precompute`: stored latents/embeddings, resume after SIGKILL, 2 processes vs 1.

Subprocess runs use 2 fake CPU devices each, the in-process reference the 8 of conftest, so the
byte comparisons also show the result does not depend on the device count. Every subprocess is
bounded in time and killed (by its own pid) if it overruns.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import process_utils

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.data import fakes
from unity_jax.data import precompute
from unity_jax.data import precomputed
from unity_jax.data import prompts
from unity_jax.data import text_encoders
from unity_jax.data import writer
from unity_jax.data.schema import RecordError
from unity_jax.model import codec as codec_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, H, W = 5, 8, 8
CLIPS_PER_SOURCE = 3
OVERRIDES = {"data.num_frames": T, "data.height": H, "data.width": W, "data.caption_len": 48,
             "data.prompt_len": 80, "model.text_encoder": "precomputed", "text.encoder": "fake"}


def make_config(**extra):
  config = config_lib.load_config(os.path.join(REPO, "configs/tiny.py"))
  for key, value in {**OVERRIDES, **extra}.items():
    group, name = key.split(".")
    config[group][name] = value
  return config


def make_data(path, bad=None):
  """CLIPS_PER_SOURCE fake clips per source; `bad` = (source, i) gets a wrong geometry."""
  clips = []
  for source in constants.SOURCES:
    for i in range(CLIPS_PER_SOURCE):
      size = (2 * H, 2 * W) if (source, i) == bad else (H, W)
      clips.append(fakes.fake_clip(seed=i, source=source, num_frames=T, height=size[0],
                                   width=size[1], with_gt=False))
  writer.write_clips(clips, str(path), "train", clips_per_shard=2)
  return clips


def tree(root):
  """{relative path: bytes} of every file under root (tensorstore leaves no temp files)."""
  out = {}
  for base, _, files in os.walk(root):
    for name in files:
      path = os.path.join(base, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def run_cli(data, out, env=None, timeout=120):
  """`unity-data precompute` in a subprocess with 2 CPU devices; returns (rc, stderr)."""
  args = ["unity_jax.data.cli", "precompute", "--data", str(data),
          "--config", os.path.join(REPO, "configs/tiny.py"), "--out", str(out)]
  args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  full_env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
              "JAX_PLATFORMS": "cpu", **(env or {})}
  rc, _, stderr = process_utils.run_module(args, timeout=timeout, env=full_env, cwd=REPO)
  return rc, stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(data dir, clips, out dir of one uninterrupted in-process run)."""
  root = tmp_path_factory.mktemp("precompute")
  clips = make_data(root / "data")
  manifest = precompute.run(make_config(), str(root / "data"), str(root / "ref"))
  assert manifest["splits"]["train"]["written"] == len(clips)
  return root / "data", clips, root / "ref"


def test_stored_arrays_are_the_codec_and_text_encoder_outputs(reference):
  data, clips, out = reference
  config = make_config()
  codec = codec_lib.make_codec(config)
  fake = text_encoders.FakeTextEncoder(config.model.text_dim)
  store = precomputed.open_precomputed(str(out), "train")
  by_id = {clip["id"]: clip for clip in clips}
  assert len(store) == len(clips)
  for index in range(len(store)):
    got = precomputed.read_clip(store, index)
    clip = by_id[got["id"]]
    available = [m for m in constants.MODALITIES if clip["available"][m]]
    assert sorted(got["latents"]) == sorted(["rgb", *available])
    for stream, latent in got["latents"].items():
      video = clip["rgb"] if stream == "rgb" else clip["modalities"][stream]
      assert latent.dtype == np.float32
      np.testing.assert_allclose(latent, codec.encode(video[None])[0], atol=1e-6)
    embedding, length = fake([clip["caption"]], config.data.caption_len)
    np.testing.assert_array_equal(got["caption_embedding"], embedding[0])
    assert got["caption_length"] == length[0]
    assert got["prompt_embedding"].shape == (5, config.data.prompt_len, config.model.text_dim)
    assert (got["prompt_length"] > 2).all()
  empty = store.empty_text()
  assert empty["caption_length"] == 2 and empty["caption_embedding"].shape == (48, 64)
  manifest = writer.read_manifest(str(data))
  reference_entry = manifest["precomputed"][os.path.realpath(out)]
  assert reference_entry["data"] == store.manifest["signature"]["data"]


def test_truncated_texts_are_counted_in_the_manifest(reference, tmp_path):
  data, clips, _ = reference
  # Lengths shorter than most texts, so the counts are not trivially zero.
  config = make_config(**{"data.caption_len": 12, "data.prompt_len": 24})
  fake = text_encoders.FakeTextEncoder(config.model.text_dim)
  captions = sum(bool(fake.truncated([c["caption"]], config.data.caption_len)[0]) for c in clips)
  prompts_cut = sum(bool(fake.truncated(
      [prompts.modality_prompt(m, c["segmentation_targets"]) for m in constants.MODALITIES],
      config.data.prompt_len).any()) for c in clips)
  assert 0 < captions and 0 < prompts_cut
  manifest = precompute.run(config, str(data), str(tmp_path / "out"))
  entry = manifest["splits"]["train"]
  assert (entry["truncated_captions"], entry["truncated_prompts"]) == (captions, prompts_cut)


def test_killed_runs_resume_to_identical_bytes(reference, tmp_path):
  data, _, out = reference
  resumed = tmp_path / "resumed"
  # 12 clips x (rgb + available modalities + 4 text arrays + done): kill mid-clip, twice.
  for kill_after in (7, 23):
    rc, stderr = run_cli(data, resumed, {precompute.KILL_ENV: str(kill_after)})
    assert rc == -9, stderr
    assert not os.path.exists(resumed / "precompute.json")
  rc, stderr = run_cli(data, resumed)
  assert rc == 0, stderr
  assert tree(resumed) == tree(out)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_write_what_one_writes(reference, tmp_path):
  data, _, out = reference
  port = _free_port()
  envs = [{"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(i)} for i in range(2)]
  args = [sys.executable, "-c", "import sys; from unity_jax.data import cli; "
          "sys.exit(cli.main(sys.argv[1:]))", "precompute", "--data", str(data), "--config",
          os.path.join(REPO, "configs/tiny.py"), "--out", str(tmp_path / "two")]
  args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  processes = [subprocess.Popen(args, env={**os.environ, **env, "JAX_PLATFORMS": "cpu",
                                           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
               for env in envs]
  try:
    results = [p.communicate(timeout=150) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, (stdout, stderr) in zip(processes, results):
    assert p.returncode == 0, stderr.decode()
    assert b'"processes": 2' in stdout, stdout  # Really sharded, not two whole runs.
  assert tree(tmp_path / "two") == tree(out)


def test_bad_record_stops_or_is_skipped_never_half_written(tmp_path):
  make_data(tmp_path / "data", bad=("general", 1))
  with pytest.raises(RecordError, match=r"general-0000\d-of-00002.array_record record \d: rgb "
                     r"is \[5, 16, 16, 3\], the config expects \[5, 8, 8, 3\]"):
    precompute.run(make_config(), str(tmp_path / "data"), str(tmp_path / "stop"))
  bad_index = 2 * CLIPS_PER_SOURCE + 1  # general is the third source.
  for name in ("latents/rgb", "caption_embedding", "done"):
    assert not os.path.exists(tmp_path / "stop" / "train" / name / "c" / str(bad_index))
  manifest = precompute.run(make_config(), str(tmp_path / "data"), str(tmp_path / "skip"),
                            skip_bad=True)
  entry = manifest["splits"]["train"]
  assert (entry["written"], entry["skipped_bad"]) == (4 * CLIPS_PER_SOURCE - 1, 1)
  assert entry["bad"][0]["index"] == bad_index and "record" in entry["bad"][0]["where"]
  store = precomputed.open_precomputed(str(tmp_path / "skip"), "train")
  with pytest.raises(RecordError, match="no precomputed arrays"):
    precomputed.read_clip(store, bad_index)
  precomputed.read_clip(store, bad_index + 1)


def test_other_configuration_in_out_dir_is_refused(reference, tmp_path):
  data, _, _ = reference
  precompute.run(make_config(), str(data), str(tmp_path / "out"))
  with pytest.raises(ValueError, match="another configuration"):
    precompute.run(make_config(**{"precompute.dtype": "bfloat16"}), str(data),
                   str(tmp_path / "out"))
  manifest = precompute.run(make_config(**{"precompute.dtype": "bfloat16"}), str(data),
                            str(tmp_path / "bf16"))
  assert manifest["splits"]["train"]["arrays"]["latents/rgb"]["dtype"] == "bfloat16"
  got = precomputed.read_clip(precomputed.open_precomputed(str(tmp_path / "bf16"), "train"), 0)
  assert got["latents"]["rgb"].dtype.name == "bfloat16"


def test_umt5_text_encoder_hook(reference, tmp_path):
  """The real umT5 path: a tiny random UMT5EncoderModel + SentencePiece model (parity extra)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  spm = pytest.importorskip("sentencepiece")
  import io  # pylint: disable=g-import-not-at-top
  from unity_jax import umt5  # pylint: disable=g-import-not-at-top
  data, clips, _ = reference
  torch.manual_seed(0)
  transformers.UMT5EncoderModel(transformers.UMT5Config(
      vocab_size=96, d_model=32, d_kv=8, num_heads=4, num_layers=2, d_ff=64,
      feed_forward_proj="gated-gelu")).save_pretrained(str(tmp_path / "text_encoder"))
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([c["caption"] for c in clips] * 10), model_writer=buffer,
      vocab_size=40, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      minloglevel=2)
  (tmp_path / "spiece.model").write_bytes(buffer.getvalue())
  config = make_config(**{"text.encoder": "umt5",
                          "text.encoder_dir": str(tmp_path / "text_encoder"),
                          "text.tokenizer_path": str(tmp_path / "spiece.model"),
                          "model.text_dim": 32})
  precompute.run(config, str(data), str(tmp_path / "out"))
  got = precomputed.read_clip(precomputed.open_precomputed(str(tmp_path / "out"), "train"), 0)
  encoder = umt5.load(str(tmp_path / "text_encoder"))
  ids, mask, _ = umt5.Tokenizer(str(tmp_path / "spiece.model")).encode(
      [next(c["caption"] for c in clips if c["id"] == got["id"])], 48)
  want = umt5.wan_text_embeddings(encoder(ids, mask), mask, 48)[0]
  np.testing.assert_array_equal(got["caption_embedding"], np.asarray(want))
  assert got["caption_length"] == mask.sum()
