"""UniBench-synth runner, unity-eval CLI, loss-curve plots and the HTML report.

The scoring plumbing is checked with an oracle pipeline that answers every call with the clip's
exact ground truth (metrics must come out perfect); one test runs the real Pipeline with random
weights end to end (schema, baselines, one trace per sampler).
"""

import json
import os

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax import model as model_lib
from unity_jax.data import cli as data_cli
from unity_jax.data import modality_render
from unity_jax.data.synthetic import generate_clip
from unity_jax.eval import cli
from unity_jax.eval import html_report
from unity_jax.eval import plots
from unity_jax.eval import unibench
from unity_jax.parallel import mesh as mesh_lib
from unity_jax.sample import video_io
from unity_jax.sample.pipeline import Pipeline
from unity_jax.sample.pipeline import SampleOutput

T, H, W = 5, 16, 16
CONFIG = "configs/tiny.py:smoke"   # 5 frames of 16 x 16, like the clips here
ESTIMATE_SECTIONS = {f"estimate/{m}" for m in unibench.GT_KEY}
EXPECTED_BASELINES = {
    "depth": {"constant_disparity"}, "flow": {"zero_flow"},
    "segmentation": {"single_mask", "empty"}, "skeleton": {"image_centre"},
    "video": {"static_video", "uniform_noise", "real_video"}}


@pytest.fixture(scope="module")
def clips():
  """One held-out-style clip per source (persons only in the first, second and fourth)."""
  return [generate_clip(10**6 + i, source, num_frames=T, height=H, width=W)
          for i, source in enumerate(constants.SOURCES)]


def exact_values(clip: dict, modality: str):
  """Ground truth in decode_modality's layout (what a perfect model's video decodes to)."""
  gt = clip["gt"]
  if modality == "depth":
    return modality_render.normalized_disparity(gt["depth"]).astype(np.float32)
  if modality == "flow":
    return gt["flow"]
  if modality == "segmentation":
    return gt["instance"]
  if modality == "skeleton":  # One extra empty person row: the runner must crop it.
    return np.concatenate([gt["keypoints"], np.zeros_like(gt["keypoints"][:, :1])], axis=1)
  return gt["part_index"], gt["uv"]


class OraclePipeline:
  """Pipeline stand-in returning the exact ground truth of the clip each input came from."""

  def __init__(self, clips, batch_size):
    self.clips, self.batch_size = clips, batch_size
    self.video_shape = clips[0]["rgb"].shape
    self.calls = []
    self.steps = {}   # task -> the num_steps it was called with

  def _clip(self, seed):
    return self.clips[seed]  # settings.seed is 0: clip position i samples with seed i.

  def _check(self, task, items, seed, prompt, num_steps=None):
    assert len(items) == len(seed) == len(prompt) == self.batch_size  # One shape per task.
    self.calls.append(task)
    self.steps.setdefault(task, set()).add(num_steps)
    return [self._clip(s) for s in seed]

  def estimate(self, video, modality, prompt, *, seed, num_steps, **kwargs):
    del kwargs
    batch = self._check("estimate", video, seed, prompt, num_steps)
    return [SampleOutput("estimate", p, modality, s, rgb=v, modality=c["modalities"][modality],
                         values=exact_values(c, modality))
            for v, c, s, p in zip(video, batch, seed, prompt)]

  def control(self, condition, modality, prompt, *, seed, num_steps, **kwargs):
    del kwargs
    batch = self._check("control", condition, seed, prompt, num_steps)
    for video, clip in zip(condition, batch):
      np.testing.assert_array_equal(video, clip["modalities"][modality])
    return [SampleOutput("control", p, modality, s, rgb=c["rgb"], modality=v)
            for v, c, s, p in zip(condition, batch, seed, prompt)]

  def generate(self, prompt, modality, *, seed, **kwargs):
    del kwargs
    batch = self._check("joint", prompt, seed, prompt)
    return [SampleOutput("joint", p, modality, s, rgb=c["rgb"], modality=c["modalities"][modality],
                         values=exact_values(c, modality))
            for c, s, p in zip(batch, seed, prompt)]


def test_oracle_scores_perfectly_next_to_baselines(clips):
  settings = unibench.EvalSettings(num_steps=3, estimate_steps=1, batch_size=3, keep_samples=1)
  pipe = OraclePipeline(clips, batch_size=3)
  result = unibench.run(pipe, clips, settings)
  # Estimation (also control fidelity's estimate back) runs estimate_steps; generation num_steps.
  assert pipe.steps["estimate"] == {1} and pipe.steps["control"] == {3}
  summary = json.loads(json.dumps(result.summary))  # JSON-serialisable as is.
  results = summary["results"]
  video_sections = {f"{t}/{m}/video" for t in ("control", "joint") for m in constants.MODALITIES}
  fidelity_sections = {f"control/{m}/fidelity" for m in unibench.GT_KEY}
  assert set(results) == ESTIMATE_SECTIONS | video_sections | fidelity_sections
  for section, entry in results.items():
    kind = "video" if section.endswith("/video") else section.split("/")[1]
    assert set(entry["baselines"]) == EXPECTED_BASELINES[kind], section
  for prefix in ("estimate/{}", "control/{}/fidelity"):
    depth, flow = results[prefix.format("depth")], results[prefix.format("flow")]
    assert depth["model"]["abs_rel"] < 1e-6 and depth["model"]["delta1"] == 1.0
    assert flow["model"]["epe"] == 0.0
    assert results[prefix.format("segmentation")]["model"]["miou"] == 1.0
    assert results[prefix.format("segmentation")]["model"]["mask_map"] == 1.0
    assert results[prefix.format("skeleton")]["model"]["pck"] == 1.0
  # Flow skips the last frame (its ground truth is a zero placeholder): zero-flow EPE is the
  # mean speed over frames 0..T-2.
  speed = [np.linalg.norm(c["gt"]["flow"][:-1], axis=-1).mean() for c in clips]
  assert results["estimate/flow"]["baselines"]["zero_flow"]["epe"] == pytest.approx(
      np.mean(speed), rel=1e-6)
  # Clips without persons have no skeleton: 3 of the 4 clips are scored.
  assert results["estimate/skeleton"]["clips"] == sum(c["available"]["skeleton"] for c in clips)
  assert results["estimate/depth"]["clips"] == 4
  video = results["control/depth/video"]
  assert video["model"]["temporal_flickering"] == pytest.approx(
      video["baselines"]["real_video"]["temporal_flickering"])
  headline = summary["headline"]
  assert headline["depth_abs_rel"]["met"] and headline["flow_epe"]["ratio"] == 0.0
  assert headline["depth_abs_rel"]["ratio"] < 1e-5
  assert set(summary["per_clip"]["estimate/depth"]) == {c["id"] for c in clips}
  assert summary["clips"] == {"count": 4, "ids": [c["id"] for c in clips]}
  # Batches of 3 over the clips having each modality (+ re-estimation after scored control).
  calls = {m: -(-sum(c["available"][m] for c in clips) // 3) for m in constants.MODALITIES}
  assert pipe.calls.count("joint") == pipe.calls.count("control") == sum(calls.values()) == 8
  assert pipe.calls.count("estimate") == 8 + sum(calls[m] for m in unibench.GT_KEY)
  assert len(result.samples) == len(unibench.TASKS) * len(constants.MODALITIES)
  control = next(s for s in result.samples if (s.task, s.modality) == ("control", "depth"))
  assert control.panels == ("condition", "generated RGB", "re-estimated", "real RGB")
  assert control.video.dtype == np.uint8 and control.video.shape[0] == T


def test_headline_gates_depth_and_reports_flow_beside_zero_flow():
  results = {"estimate/depth": {"model": {"abs_rel": 0.2},
                                "baselines": {"constant_disparity": {"abs_rel": 0.4}}},
             "estimate/flow": {"model": {"epe": 0.4},
                               "baselines": {"zero_flow": {"epe": 0.38}}}}
  checks = unibench.headline(results)
  assert checks["depth_abs_rel"]["met"] and checks["depth_abs_rel"]["target"] == "ratio <= 0.7"
  # Flow: model, zero-flow baseline and ratio, but no target and no pass/fail.
  assert checks["flow_epe"] == {"model": 0.4, "baseline": 0.38, "ratio": pytest.approx(0.4 / 0.38)}
  page = html_report._headline(checks)
  assert 'class="check met">depth_abs_rel' in page
  assert 'class="check reported">flow_epe: model 0.4000 vs baseline 0.3800' in page
  assert "reported, no target" in page and "not met" not in page


def test_ground_truth_skips_what_cannot_be_scored(clips):
  general = next(c for c in clips if c["source"] == "general")
  assert unibench.ground_truth(general, "skeleton") is None      # no persons
  assert unibench.ground_truth(general, "densepose") is None     # no metric
  assert unibench.ground_truth(general, "flow").shape == (T - 1, H, W, 2)
  sky = dict(general, gt=dict(general["gt"], depth=np.full((T, H, W), 50.0, np.float32)))
  assert unibench.ground_truth(sky, "depth") is None             # all sky: nothing valid


def test_settings_and_clip_shape_errors(clips):
  with pytest.raises(ValueError, match="unknown task 'sample'"):
    unibench.EvalSettings(tasks=("sample",))
  with pytest.raises(ValueError, match="unknown modality"):
    unibench.EvalSettings(modalities=("normals",))
  pipe = OraclePipeline(clips, 1)
  pipe.video_shape = (9, 32, 32, 3)
  with pytest.raises(ValueError, match=r"--frames 9 --size 32 32"):
    unibench.run(pipe, clips)


def test_load_clips_interleaves_sources_and_needs_ground_truth(tmp_path):
  shape = ["--frames", str(T), "--size", str(H), str(W), "--workers", "1"]
  assert data_cli.main(["synth", "--out", str(tmp_path), "--clips", "8", "--split", "eval",
                        *shape]) == 0
  assert data_cli.main(["synth", "--out", str(tmp_path), "--clips", "4", *shape]) == 0
  loaded = unibench.load_clips(str(tmp_path), "eval", max_clips=6)
  assert [c["source"] for c in loaded] == list(constants.SOURCES) + list(constants.SOURCES[:2])
  assert all("gt" in c for c in loaded)
  with pytest.raises(ValueError, match="without ground truth.*--split eval"):
    unibench.load_clips(str(tmp_path), "train")


def test_cli_reports_missing_checkpoints(tmp_path, capsys):
  data = tmp_path / "data"
  assert data_cli.main(["synth", "--out", str(data), "--clips", "4", "--split", "eval",
                        "--frames", str(T), "--size", str(H), str(W), "--workers", "1"]) == 0
  (tmp_path / "run").mkdir()
  assert cli.main(["--workdir", str(tmp_path / "run"), "--data", str(data),
                   "--jax-cache-dir", ""]) == 2
  assert "has no checkpoints" in capsys.readouterr().err
  assert cli.main(["--workdir", str(tmp_path / "run"), "--data", str(tmp_path / "nothing"),
                   "--jax-cache-dir", ""]) == 2
  assert "not an OpenUni data directory" in capsys.readouterr().err


def test_random_weight_pipeline_end_to_end(clips):
  config = config_lib.load_config(CONFIG)
  # One device: compiling for conftest's 8 fake devices would only slow the test down.
  params = jax.jit(lambda key: model_lib.init_params(config, key))(jax.random.key(0))
  pipe = Pipeline(config, params,
                  mesh=mesh_lib.make_mesh(config, jax.devices()[:1]))
  three = clips[:3]   # Skeleton: the first two clips have persons, the third not.
  settings = unibench.EvalSettings(num_steps=1, batch_size=2, tasks=("estimate", "control"),
                                   modalities=("depth", "skeleton"), keep_samples=1)
  result = unibench.run(pipe, three, settings)
  results = result.summary["results"]
  assert set(results) == {
      "estimate/depth", "estimate/skeleton", "control/depth/video", "control/depth/fidelity",
      "control/skeleton/video", "control/skeleton/fidelity"}
  for entry in results.values():
    assert entry["baselines"] and all(np.isfinite(v) for v in entry["model"].values())
  assert results["estimate/depth"]["clips"] == 3 and results["estimate/skeleton"]["clips"] == 2
  # Padded batches keep one shape: each jitted sampler (estimate, guided control) traced once.
  assert len(pipe.trace_counts) == 2 and set(pipe.trace_counts.values()) == {1}
  assert set(result.summary["seconds"]) == {"estimate", "control"}
  assert [s.video.shape[0] for s in result.samples] == [T] * 4


# ------------------------------------------------------------------------------ plots, report


def _write_metrics(path, steps=(10, 20, 30, 40)):
  with open(path, "w", encoding="utf-8") as f:
    for i, step in enumerate(steps):
      stage = int(step > 20)
      record = {"step": step, "stage": stage, "stage_name": f"stage{stage}", "loss": 2.0 / (i + 1),
                "loss/rgb": 1.0, "count/rgb": 4.0}
      for task in constants.TASKS:
        record[f"loss/task/{task}"], record[f"count/task/{task}"] = 1.0 + i, 2.0
      for m in constants.MODALITIES:  # Skeleton only appears in the second stage.
        seen = m != "skeleton" or stage == 1
        record[f"loss/modality/{m}"], record[f"count/modality/{m}"] = (0.5, 1.0) if seen else (0, 0)
      f.write(json.dumps(record) + "\n")
    f.write('{"step": 50, "loss"')  # A run killed mid-write.


def test_plots_series_ticks_and_pngs(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_metrics(path)
  records = plots.read_metrics(str(path))
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  assert plots.series(records, "loss/modality/skeleton", "count/modality/skeleton") == (
      [30, 40], [0.5, 0.5])
  assert plots.stage_starts(records) == [(30, "stage1")]
  ticks = plots.nice_ticks(0.61, 1.72, target=6)
  assert ticks[0] <= 0.61 and ticks[-1] >= 1.72 and ticks == [0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8]
  written = plots.write_loss_curves(str(path), str(tmp_path / "curves"))
  assert {w["name"] for w in written} == {"loss_total", "loss_modalities"} | {
      f"loss_task_{t}" for t in constants.LOSS_TASKS}
  for w in written:
    image = iio.imread(w["path"])
    assert image.shape == (360, 640, 3) and image.std() > 0
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plots.read_metrics(str(tmp_path / "metrics.jsonl.missing"))


def test_html_report_links_existing_files(tmp_path, clips):
  run = tmp_path / "run"
  run.mkdir()
  _write_metrics(run / "metrics.jsonl")
  (run / "config.json").write_text(json.dumps({"model": {"dim": 96}}))
  (run / "summary.json").write_text(json.dumps({"step": 40, "params_sha256": "ab" * 32}))
  result = unibench.run(OraclePipeline(clips, 4), clips,
                        unibench.EvalSettings(batch_size=4, modalities=("depth", "flow")))
  summary = dict(result.summary, step=40, weights="ema", workdir=str(run))
  summary["samples"] = html_report.write_samples(result.samples, str(run / "samples"))
  eval_json = run / "eval.json"
  eval_json.write_text(json.dumps(summary))
  out = tmp_path / "site" / "report.html"
  assert html_report.main(["--eval", str(eval_json), "--out", str(out)]) == 0
  page = out.read_text()
  assert '<table id="metrics">' in page and "constant_disparity" in page
  assert page.count("<video ") == len(result.samples) == 6
  assert "ab" * 32 in page and "&quot;dim&quot;: 96" in page
  links = [part.split('"')[0] for part in page.split('src="')[1:]]
  assert any(link.endswith(".mp4") for link in links) and any(
      link.endswith("loss_total.png") for link in links)
  for link in links:
    assert os.path.isfile(out.parent / link), link
  mp4 = next(link for link in links if link.endswith(".mp4"))
  frames = video_io.read_video(str(out.parent / mp4))
  assert frames.shape[0] == T and frames.shape[1] % 2 == 0
  assert '<tr class="better">' in page   # The oracle beats its baselines.


def test_plots_and_report_skip_gaps_of_skipped_nonfinite_steps(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  _write_metrics(run / "metrics.jsonl", steps=(10, 20, 30, 40, 50))
  lines = (run / "metrics.jsonl").read_text().splitlines()[:5]
  records = [json.loads(line) for line in lines]
  for key in records[1]:   # Step 20: every step of the window skipped as non-finite.
    if key.startswith("loss"):
      records[1][key] = None
  records[1]["skipped_steps"] = 10
  records[2]["loss"] = "nan"   # As older monitors wrote it.
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  records = plots.read_metrics(str(run / "metrics.jsonl"))
  assert plots.series(records, "loss") == ([10, 40, 50], [2.0, 0.5, 0.4])
  assert plots.series(records, "loss", keep_gaps=True) == (
      [10, 20, 30, 40, 50], [2.0, None, None, 0.5, 0.4])
  assert plots.series(records, "loss/task/joint", "count/task/joint", keep_gaps=True)[1] == [
      1.0, None, 3.0, 4.0, 5.0]
  written = plots.write_loss_curves(str(run / "metrics.jsonl"), str(tmp_path / "curves"))
  assert all(iio.imread(w["path"]).std() > 0 for w in written)
  out = tmp_path / "report.html"
  html_report.write_report(str(out), {"results": {"rgb": {"model": {"pck": None}}}}, str(run))
  assert "loss_total.png" in out.read_text() and "–" in out.read_text()
