"""configs/wan.py:smoke end to end through a random Wan VAE (both generations): synthetic data
at the config's geometry, 20 training steps with falling loss (the second run starting from a
random diffusers Wan transformer), and `Pipeline` decoding its samples through the VAE."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from unity_jax import Pipeline  # noqa: E402
from unity_jax import config as config_lib  # noqa: E402
from unity_jax import wan  # noqa: E402
from unity_jax.train import trainer as trainer_lib  # noqa: E402
from unity_jax.wan import random_checkpoint  # noqa: E402
from unity_jax.wan.vae_codec import WanVAECodec  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _losses(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


@pytest.mark.slow
@pytest.mark.parametrize("generation,from_transformer", [("2.1", True), ("2.2", False)])
def test_wan_smoke_trains_and_samples_through_the_vae(generation, from_transformer, tmp_path):
  spec = str(ROOT / "configs/wan.py") + f":smoke,vae={generation}"
  transformer_dir, vae_dir = random_checkpoint.write_pair(str(tmp_path / "ckpt"), generation)
  data = tmp_path / "data"
  subprocess.run([sys.executable, "-m", "unity_jax.data.cli", "synth", "--config", spec,
                  "--out", str(data), "--clips", "16"], check=True, cwd=ROOT)
  config = config_lib.load_config(spec)
  config.codec.weights = vae_dir
  config.data.dir = str(data)
  if from_transformer:
    config.init.transformer = transformer_dir
  workdir = tmp_path / "run"
  trainer = trainer_lib.Trainer(config, str(workdir), devices=jax.devices()[:1])
  if from_transformer:
    # The state starts at the imported weights (RGB path) before any step.
    state, source, _ = trainer.restore_or_init()
    source.close()
    imported = wan.load_transformer(transformer_dir, config)
    np.testing.assert_array_equal(np.asarray(state.params["patch_embed"]["kernel"]),
                                  np.asarray(imported["patch_embed"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(state.ema_params["rgb_head"]["kernel"]),
                                  np.asarray(imported["rgb_head"]["kernel"]))
  result = trainer.run()
  assert result.status == "completed" and result.step == 20
  losses = _losses(workdir)
  assert len(losses) == 4 and all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0], losses

  pipe = Pipeline.from_workdir(str(workdir))
  assert isinstance(pipe.codec, WanVAECodec)
  out = pipe.generate("a person walks", modality="depth", num_steps=2, guidance_scale=1.0,
                      seed=0)
  frames, size = config.data.num_frames, config.data.height
  assert out.rgb.shape == (frames, size, size, 3) and out.rgb.dtype == np.uint8
  assert out.modality.shape == (frames, size, size, 3)
  # Decoded through the VAE (not the pixel codec): the decoder's output is not constant.
  assert out.rgb.std() > 0
