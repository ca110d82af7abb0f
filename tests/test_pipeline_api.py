"""The sampling API: Pipeline tasks, guidance, sharding, checkpoints, errors, CLI, video files.

(The data pipeline's tests are tests/test_pipeline.py.) A smoke-size UnityDiT with random
weights; 4 ODE steps keep every compiled sampler cheap.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unity_jax import Pipeline
from unity_jax import config as config_lib
from unity_jax.flow import schedules
from unity_jax.model import text as text_lib
from unity_jax.sample import cli, denoise, video_io

import sampling_utils

STEPS = 4


@pytest.fixture(scope="module")
def config():
  return config_lib.load_config("configs/tiny.py:smoke")


@pytest.fixture(scope="module")
def params(config):
  return sampling_utils.random_params(config)


@pytest.fixture(scope="module")
def pipe(config, params):
  return Pipeline(config, params, mesh=sampling_utils.one_device_mesh())


def _video(pipe, seed):
  return np.random.default_rng(seed).integers(0, 256, pipe.video_shape, dtype=np.uint8)


def test_generate_joint_outputs_seeds_and_one_trace_per_shape(pipe):
  out = pipe.generate("a red ball rolls left", modality="depth", num_steps=STEPS, seed=0)
  t, h, w, _ = pipe.video_shape
  assert out.rgb.shape == out.modality.shape == (t, h, w, 3)
  assert out.rgb.dtype == out.modality.dtype == np.uint8
  assert out.values.shape == (t, h, w) and out.values.dtype == np.float32
  assert 0.0 <= out.values.min() and out.values.max() <= 1.0
  assert (out.task, out.modality_name, out.seed) == ("joint", "depth", 0)
  again = pipe.generate("a red ball rolls left", modality="depth", num_steps=STEPS, seed=0)
  np.testing.assert_array_equal(again.rgb, out.rgb)
  np.testing.assert_array_equal(again.modality, out.modality)
  other_seed = pipe.generate("a red ball rolls left", modality="depth", num_steps=STEPS, seed=1)
  other_scale = pipe.generate("two people walk", modality="flow", num_steps=STEPS, seed=0,
                              guidance_scale=3.0)
  assert np.abs(other_seed.rgb.astype(int) - out.rgb).max() > 10
  assert other_scale.values.shape == (t, h, w, 2)
  # New seeds, prompts, modalities and guidance values reuse the one compiled loop.
  key = (denoise.SamplerSpec("joint", text_guidance=True), 1, STEPS)
  assert pipe.trace_counts[key] == 1, pipe.trace_counts


def test_cfg_scale_one_is_the_conditional_only_path_exactly(pipe):
  out = pipe.generate("a red ball", modality="depth", num_steps=STEPS, guidance_scale=1.0)
  inputs, _ = pipe.prepare_inputs("joint", ["a red ball"], "depth")
  conditional = pipe.sample_latents(denoise.SamplerSpec("joint"), inputs, STEPS)
  # Scale 1 builds no unconditional branch, so it IS the conditional-only computation. (Running
  # the branch anyway with weight 0 agrees only to float rounding: a [2B] batched forward is not
  # bitwise the [B] one.)
  assert (denoise.SamplerSpec("joint", text_guidance=False), 1, STEPS) in pipe.trace_counts
  guided = pipe.sample_latents(denoise.SamplerSpec("joint", text_guidance=True), inputs, STEPS,
                               guidance_scale=1.0)
  for a, b in zip(conditional, guided):
    np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_array_equal(pipe.codec.to_uint8(pipe.codec.decode(conditional[0])[0]),
                                out.rgb)
  # An independent conditional-only Euler loop (plain model calls, no sampler code) agrees.
  forward = jax.jit(lambda x, m, t: pipe.model.apply(
      {"params": pipe.params}, rgb=x, t_rgb=jnp.full((1,), t), caption=inputs["caption"],
      modality=m, modality_id=inputs["modality_id"], t_modality=jnp.full((1, 1), t),
      prompt=inputs["prompt"]))
  x, m = inputs["rgb"], inputs["modality"]
  ts = np.asarray(schedules.sampling_schedule(STEPS, pipe.shift))
  for t, t_next in zip(ts[:-1], ts[1:]):
    v_x, v_m = forward(x, m, t)
    x, m = x + (t_next - t) * v_x, m + (t_next - t) * v_m
  np.testing.assert_allclose(conditional[0], x, atol=1e-5)
  np.testing.assert_allclose(conditional[1], m, atol=1e-5)


def test_prompt_batch_is_sharded_and_seeded_per_sample(config, params, pipe):
  prompts = ["a red ball", "two people walk", "a dog runs"]
  batch_inputs, seeds = pipe.prepare_inputs("rgb", prompts, seed=5)
  assert seeds == [5, 6, 7]
  alone, _ = pipe.prepare_inputs("rgb", prompts[1:2], seed=6)
  np.testing.assert_array_equal(batch_inputs["rgb"][1], alone["rgb"][0])   # same noise
  sharded = Pipeline(config, params, mesh=sampling_utils.one_device_mesh(4))
  spec = denoise.SamplerSpec("rgb")
  rgb_sharded, _ = sharded.sample_latents(spec, batch_inputs, STEPS)
  rgb_single, _ = pipe.sample_latents(spec, batch_inputs, STEPS)
  assert (spec, 4, STEPS) in sharded.trace_counts   # 3 prompts padded to the 4 data shards
  np.testing.assert_allclose(rgb_sharded, rgb_single, atol=1e-5)
  outs = sharded.generate(prompts, num_steps=STEPS, seed=5, guidance_scale=1.0)
  assert [o.prompt for o in outs] == prompts and [o.seed for o in outs] == [5, 6, 7]
  assert all(o.modality is None and o.values is None for o in outs)


def test_control_keeps_the_condition_exactly_and_depends_on_it(pipe):
  condition = _video(pipe, 0)
  out = pipe.control(condition=condition, modality="depth", prompt="a ball", num_steps=STEPS,
                     guidance_scale=1.0)
  np.testing.assert_array_equal(out.modality, condition)
  assert out.values is None and out.task == "control"
  inputs, _ = pipe.prepare_inputs("control", ["a ball"], "depth", videos=condition[None])
  rgb, modality = pipe.sample_latents(denoise.SamplerSpec("control"), inputs, STEPS)
  np.testing.assert_array_equal(modality, inputs["modality"])      # latents, bit for bit
  other = pipe.control(condition=_video(pipe, 1), modality="depth", prompt="a ball",
                       num_steps=STEPS, guidance_scale=1.0)
  assert np.abs(other.rgb.astype(int) - out.rgb).max() > 10
  guided = pipe.control(condition=condition, modality="depth", prompt="a ball", num_steps=STEPS,
                        guidance_scale=1.0, condition_scale=3.0)
  np.testing.assert_array_equal(guided.modality, condition)
  assert np.abs(guided.rgb.astype(int) - out.rgb).max() > 10


def test_estimate_keeps_rgb_exactly_and_decodes_every_modality(pipe):
  video = _video(pipe, 2)
  t, h, w, _ = pipe.video_shape
  expected = {"depth": ((t, h, w), np.float32), "flow": ((t, h, w, 2), np.float32),
              "segmentation": ((t, h, w), np.int32)}
  for modality, (shape, dtype) in expected.items():
    out = pipe.estimate(video=video, modality=modality, num_steps=STEPS)
    np.testing.assert_array_equal(out.rgb, video)
    assert out.modality.shape == (t, h, w, 3) and out.values.shape == shape
    assert out.values.dtype == dtype
  skeleton = pipe.estimate(video=video, modality="skeleton", num_steps=STEPS)
  assert skeleton.values.shape[0] == t and skeleton.values.shape[2:] == (17, 3)
  part, uv = pipe.estimate(video=video, modality="densepose", num_steps=STEPS).values
  assert part.shape == (t, h, w) and uv.shape == (t, h, w, 2)
  # Segmentation targets go into the modality prompt and change the estimate.
  persons = pipe.estimate(video=video, modality="segmentation", targets="two persons",
                          num_steps=STEPS)
  default = pipe.estimate(video=video, modality="segmentation", num_steps=STEPS)
  assert np.abs(persons.modality.astype(int) - default.modality).max() > 0
  # All of these reused one compiled loop (empty prompt: no guidance branch).
  assert pipe.trace_counts[(denoise.SamplerSpec("estimate"), 1, STEPS)] == 1


def test_clear_errors(pipe, tmp_path):
  with pytest.raises(ValueError, match=r"unknown modality 'normals'; expected one of \['depth'"):
    pipe.generate("x", modality="normals")
  with pytest.raises(ValueError, match="unknown modality 'normals'"):
    pipe.estimate(video=_video(pipe, 0), modality="normals")
  short = _video(pipe, 0)[:3]
  with pytest.raises(ValueError, match=r"condition: got shape \(3, 16, 16, 3\).*\[5, 16, 16, 3\]"
                     r".*data.num_frames=5, data.height=16, data.width=16"):
    pipe.control(condition=short, modality="depth")
  with pytest.raises(ValueError, match=r"video: got shape \(5, 8, 16, 3\)"):
    pipe.estimate(video=_video(pipe, 0)[:, :8], modality="depth")
  with pytest.raises(ValueError, match="expected uint8.*got dtype float32"):
    pipe.estimate(video=_video(pipe, 0).astype(np.float32), modality="depth")
  with pytest.raises(ValueError, match="unknown solver 'rk4'"):
    pipe.generate("x", solver="rk4")
  with pytest.raises(ValueError, match="num_steps must be a positive integer"):
    pipe.generate("x", num_steps=0)
  with pytest.raises(ValueError, match="2 videos for 3 prompts"):
    pipe.estimate(video=np.stack([_video(pipe, 0)] * 2), modality="depth", prompt=["a"] * 3)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    Pipeline.from_workdir(str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="has no checkpoints.*unity-train"):
    Pipeline.from_workdir(str(tmp_path))
  with pytest.raises(ValueError, match=r"weights='best'; expected one of \['ema', 'raw'\]"):
    Pipeline.from_workdir(str(tmp_path), weights="best")


@pytest.fixture(scope="module")
def workdir(config, tmp_path_factory):
  """A workdir with one checkpoint (step 7) written by the trainer's Checkpointer, whose raw and
  EMA parameters differ."""
  from unity_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from unity_jax.train import optim  # pylint: disable=g-import-not-at-top
  from unity_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("run"))
  raw = sampling_utils.random_params(config, seed=1)
  ema = sampling_utils.random_params(config, seed=2)
  optimizer = optim.make_optimizer(config, raw)
  state = state_lib.TrainState(
      step=jnp.int32(7), stage=jnp.int32(1), rng=jax.random.key_data(jax.random.key(0)),
      params=raw, opt_state=optimizer.init(raw), ema_params=ema,
      nonfinite_total=jnp.int32(0), nonfinite_consecutive=jnp.int32(0))
  checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_dir(path), keep=2)
  checkpointer.save(state, config_json=json.loads(config.to_json_best_effort()))
  checkpointer.close()
  return path, raw, ema


def test_from_workdir_loads_ema_by_default_and_raw_on_request(workdir):
  path, raw, ema = workdir
  for pipe, expected in ((Pipeline.from_workdir(path), ema),
                         (Pipeline.from_workdir(path, weights="raw", step=7), raw)):
    assert pipe.step == 7
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(pipe.params), expected)
  assert pipe.weights == "raw" and pipe.video_shape == (5, 16, 16, 3)
  with pytest.raises(ValueError, match=r"no checkpoint at step 3; available steps: \[7\]"):
    Pipeline.from_workdir(path, step=3)


def test_cli_estimate_writes_grid_streams_and_values(workdir, tmp_path, capsys):
  path, _, _ = workdir
  video = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  video_io.write_video(str(tmp_path / "clip.npy"), video)
  out = str(tmp_path / "est.png")
  assert cli.main(["--workdir", path, "--task", "estimate", "--modality", "depth", "--input",
                   str(tmp_path / "clip.npy"), "--ground-truth", str(tmp_path / "clip.npy"),
                   "--out", out, "--steps", "2", "--scale", "1", "--save-streams"]) == 0
  assert "estimate depth" in capsys.readouterr().out
  sheet = _png(out)                          # PNG frame sheet of the grid, labels on top
  assert sheet.shape == (12 + 5 * 16 + 4 * 2, 3 * 16 + 2 * 2, 3)   # RGB | depth | truth
  # The RGB stream of an estimate is the input clip, written losslessly.
  np.testing.assert_array_equal(_png(tmp_path / "est.rgb.png"), video_io.frame_sheet(video))
  assert _png(tmp_path / "est.modality.png").shape == video_io.frame_sheet(video).shape
  with np.load(str(tmp_path / "est.values.npz")) as values:
    assert values["depth"].shape == (5, 16, 16)


def _png(path):
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  return iio.imread(str(path))


def test_cli_errors_exit_2_with_one_line(workdir, tmp_path, capsys):
  path, _, _ = workdir
  assert cli.main(["--workdir", path, "--task", "control", "--out", "x.mp4"]) == 2
  assert "--task control needs --modality and --input" in capsys.readouterr().err
  assert cli.main(["--workdir", str(tmp_path), "--task", "joint", "--out", "x.mp4"]) == 2
  assert "has no checkpoints" in capsys.readouterr().err
  wrong = tmp_path / "wrong.npy"
  np.save(wrong, np.zeros((9, 16, 16, 3), np.uint8))
  assert cli.main(["--workdir", path, "--task", "estimate", "--modality", "flow", "--input",
                   str(wrong), "--out", str(tmp_path / "x.mp4")]) == 2
  assert "data.num_frames=5" in capsys.readouterr().err


def test_video_files_and_grids(tmp_path):
  video = np.random.default_rng(0).integers(0, 256, (5, 15, 17, 3), dtype=np.uint8)
  video_io.write_video(str(tmp_path / "v.npy"), video)
  np.testing.assert_array_equal(video_io.read_video(str(tmp_path / "v.npy")), video)
  smooth = np.broadcast_to(np.linspace(0, 255, 17, dtype=np.uint8)[None, None, :, None],
                           (5, 15, 17, 3)).copy()
  video_io.write_video(str(tmp_path / "v.mp4"), smooth)          # odd size: padded to even
  back = video_io.read_video(str(tmp_path / "v.mp4"))
  assert back.shape == (5, 16, 18, 3)
  assert np.abs(back[:, :15, :17].astype(int) - smooth).mean() < 4    # lossy H.264
  grid = video_io.side_by_side([video, video], scale=2, gap=3, labels=["RGB", "depth"])
  assert grid.shape == (5, 12 + 30, 2 * 34 + 3, 3)
  video_io.write_video(str(tmp_path / "g.png"), grid)
  assert _png(tmp_path / "g.png").shape == (5 * 42 + 4 * 2, 71, 3)
  video_io.write_grid(str(tmp_path / "h.png"), [video, video], labels=["RGB", "depth"], scale=2,
                      gap=3)   # a frame sheet labelled once on top
  assert _png(tmp_path / "h.png").shape == (12 + 5 * 30 + 4 * 3, 71, 3)
  with pytest.raises(ValueError, match="unsupported video file type '.avi'"):
    video_io.write_video(str(tmp_path / "v.avi"), video)
  with pytest.raises(ValueError, match="panel 1 has 4 frames"):
    video_io.side_by_side([video, video[:4]])
