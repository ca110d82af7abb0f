"""End to end (slow): a shortened launch/quickstart.sh, then report.html in headless Chromium.

The quickstart runs with few steps and clips (QUICKSTART_* variables) into a temporary
directory, using this interpreter's environment as its venv (creating and installing a fresh
one is the script's first phase; CI's own fresh venv covers installation). Chromium is Debian's
`chromium` package, installed here with apt-get when missing and running as root. The report
screenshot is saved to artifacts/report.png.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

from unity_jax.sample import video_io

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")
EVAL_CLIPS = 4


def run_bounded(command, timeout: float, **kwargs) -> subprocess.CompletedProcess:
  """Runs `command` in its own process group; on timeout kills that group (and only it)."""
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, **kwargs)
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    stdout, stderr = process.communicate()
    pytest.fail(f"{command[:2]} did not finish in {timeout} s\nstdout:\n{stdout[-3000:]}\n"
                f"stderr:\n{stderr[-3000:]}")
  return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def ensure_chromium() -> str:
  if not os.path.exists(CHROMIUM):
    if os.geteuid() != 0:
      pytest.skip(f"{CHROMIUM} is missing and installing it needs root (apt-get install chromium)")
    result = run_bounded(["bash", "-c", "apt-get update -q && apt-get install -y -q chromium"],
                         timeout=1200)
    assert result.returncode == 0 and os.path.exists(CHROMIUM), result.stderr[-3000:]
  return CHROMIUM


def chromium(url: str, profile: Path, *args) -> subprocess.CompletedProcess:
  """Headless Chromium with a fresh profile; 8 s of virtual time lets the videos load."""
  shutil.rmtree(profile, ignore_errors=True)
  command = [ensure_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--virtual-time-budget=8000", *args, url]
  result = run_bounded(command, timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def quickstart_env(tmp: Path, **overrides) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  # conftest's 8 fake devices would make the quickstart shard its tiny batches 8 ways.
  env.update(QUICKSTART_RUN=str(tmp / "run"), QUICKSTART_DATA=str(tmp / "data"),
             QUICKSTART_STEPS="12 12", QUICKSTART_TRAIN_CLIPS="16",
             QUICKSTART_EVAL_CLIPS=str(EVAL_CLIPS), QUICKSTART_SAMPLE_STEPS="2",
             QUICKSTART_VENV=sys.prefix)
  env.update(overrides)
  return env


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("quickstart")
  result = run_bounded(["bash", "launch/quickstart.sh"], timeout=1500, cwd=REPO,
                       env=quickstart_env(tmp))
  assert result.returncode == 0, (f"stdout:\n{result.stdout[-4000:]}\n"
                                  f"stderr:\n{result.stderr[-4000:]}")
  return tmp, result


def test_quickstart_phases_and_outputs(quickstart):
  tmp, result = quickstart
  phases = re.findall(r"^\[quickstart \d+:\d\d\] (\d)/5 ", result.stdout, re.M)
  assert phases == ["1", "2", "3", "4", "5"], result.stdout
  assert "done in" in result.stdout and "load average" in result.stdout
  run = tmp / "run"
  summary = json.loads((run / "summary.json").read_text())
  assert summary["step"] == 24 and summary["stage"] == 1 and len(summary["ema_sha256"]) == 64
  config = json.loads((run / "config.json").read_text())
  assert config["train"]["data_source"] == "openuni"
  evaluation = json.loads((run / "eval" / "unibench_synth.json").read_text())
  assert evaluation["clips"]["count"] == EVAL_CLIPS
  assert evaluation["results"]["estimate/depth"]["baselines"]["constant_disparity"]["abs_rel"] > 0
  assert set(evaluation["headline"]) == {"depth_abs_rel", "flow_epe"}
  assert {(s["task"], s["modality"]) for s in evaluation["samples"]} >= {
      ("estimate", "depth"), ("control", "flow"), ("joint", "segmentation")}
  assert "| estimate/depth | abs_rel ↓ |" in result.stdout   # the markdown table
  sheet = iio.imread(run / "contact_sheet.png")   # 4 eval sources x 5 panels of 3 frames
  assert sheet.ndim == 3 and sheet.shape[0] > 4 * 32 * 3 and sheet.std() > 10


def test_report_renders_in_headless_chromium(quickstart):
  tmp, _ = quickstart
  report = tmp / "run" / "report.html"
  dom = chromium(report.as_uri(), tmp / "chromium-dom", "--dump-dom").stdout
  status = re.search(r'<span id="video-status" data-total="(\d+)" data-loaded="(\d+)" '
                     r'data-failed="(\d+)"', dom)
  assert status, "the page script did not run (no #video-status counts in the DOM)"
  total, loaded, failed = map(int, status.groups())
  assert total >= 3 * 5 - 1 and loaded == total and failed == 0, status.group(0)
  assert '<table id="metrics">' in dom and "constant_disparity" in dom and "zero_flow" in dom
  assert dom.count("<tr") > 20 and "loss_task_estimate.png" in dom
  # Every linked video decodes to the clip's frames (configs/tiny.py's data.num_frames).
  num_frames = json.loads((tmp / "run" / "config.json").read_text())["data"]["num_frames"]
  videos = re.findall(r'<video src="([^"]+\.mp4)"', dom)
  assert len(videos) == total
  for video in videos:
    frames = video_io.read_video(str(report.parent / video))
    assert frames.shape[0] == num_frames and frames.std() > 0, video
  artifacts = REPO / "artifacts"
  artifacts.mkdir(exist_ok=True)
  screenshot = artifacts / "report.png"
  screenshot.unlink(missing_ok=True)
  chromium(report.as_uri(), tmp / "chromium-shot", f"--screenshot={screenshot}",
           "--window-size=1280,2400")
  image = iio.imread(screenshot)
  assert image.shape[:2] == (2400, 1280) and image.std() > 10


def test_quickstart_rerun_reuses_data_and_training(quickstart):
  tmp, _ = quickstart
  result = run_bounded(["bash", "launch/quickstart.sh"], timeout=900, cwd=REPO,
                       env=quickstart_env(tmp, QUICKSTART_SAMPLE_STEPS="1"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "already trained" in result.stdout
  assert "unity-train" not in result.stderr and "stage 1 stage2_all" not in result.stdout
