"""End-to-end tests of `unity-train` in subprocesses: smoke run, determinism, resume after
SIGKILL, SIGTERM, the non-finite policy and a two-process run.

Every subprocess runs in its own process group, is bounded by a timeout and is killed with its
group. All runs share one persistent XLA compilation cache, so only the first run of each
program compiles.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from unity_jax.train import export

SMOKE = "configs/tiny.py:smoke"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 300


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def train_env(cache_dir, devices=1, **extra):
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    if name not in extra:
      env.pop(name, None)
  return env


def start(workdir, *overrides, env, log_name="train"):
  """Starts unity-train in its own process group; output goes to files in the workdir."""
  os.makedirs(workdir, exist_ok=True)
  out = open(os.path.join(workdir, f"{log_name}.out"), "ab")
  command = [sys.executable, "-m", "unity_jax.train.cli", "--config", SMOKE, "--workdir",
             str(workdir), *overrides]
  proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                          start_new_session=True)
  out.close()
  return proc


def kill_group(proc, sig=signal.SIGKILL):
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass


def wait(proc, timeout=RUN_TIMEOUT):
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    kill_group(proc)
    proc.wait()
    raise


def run(workdir, *overrides, env, timeout=RUN_TIMEOUT):
  """Runs unity-train to the end; returns (exit status, its output)."""
  proc = start(workdir, *overrides, env=env)
  status = wait(proc, timeout)
  with open(os.path.join(workdir, "train.out")) as f:
    return status, f.read()


def read_json(path):
  with open(path) as f:
    return json.load(f)


def metric_lines(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def wait_for_lines(proc, workdir, count, timeout=RUN_TIMEOUT):
  deadline = time.monotonic() + timeout
  while len(metric_lines(workdir)) < count:
    if proc.poll() is not None:
      raise AssertionError(f"unity-train exited with {proc.returncode} before writing "
                           f"{count} metric lines")
    if time.monotonic() > deadline:
      kill_group(proc)
      raise TimeoutError(f"no {count} metric lines after {timeout} s")
    time.sleep(0.02)


def fingerprints(summary):
  return summary["params_sha256"], summary["ema_sha256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
  """The plain smoke command, uninterrupted (compiles into the shared cache)."""
  workdir = tmp_path_factory.mktemp("reference")
  started = time.monotonic()
  status, output = run(workdir, env=train_env(cache_dir))
  seconds = time.monotonic() - started
  assert status == 0, output
  return workdir, read_json(workdir / "summary.json"), seconds, output


def test_smoke_run_finishes_quickly_and_loss_falls(reference):
  workdir, summary, seconds, output = reference
  assert seconds < 120, f"smoke run took {seconds:.0f} s"
  assert summary["step"] == 20 and summary["stage"] == 1
  assert len(summary["params_sha256"]) == 64 and summary["nonfinite_skipped"] == 0
  windows = metric_lines(workdir)
  assert [w["step"] for w in windows] == [10, 20]
  assert windows[-1]["loss"] < windows[0]["loss"], windows
  assert "GFLOP/step" in output and "per-device memory" in output
  assert os.path.isfile(workdir / "config.json")
  assert os.listdir(workdir / "tensorboard")
  index = read_json(summary["export"])
  assert index["sha256"] == summary["ema_sha256"]


def test_same_seed_gives_the_same_fingerprint(reference, tmp_path, cache_dir):
  _, summary, _, _ = reference
  status, output = run(tmp_path, env=train_env(cache_dir))
  assert status == 0, output
  assert fingerprints(read_json(tmp_path / "summary.json")) == fingerprints(summary)


def test_invalid_config_fails_before_compiling(tmp_path, cache_dir):
  status, output = run(tmp_path, "--config.train.accumulate_steps=3", env=train_env(cache_dir),
                       timeout=120)
  assert status == 2, output
  assert "config.train.accumulate_steps=3: must be >= 1 and divide train.batch_size=8" in output
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.slow
def test_skipped_nonfinite_steps_keep_metrics_numeric_and_the_report_builds(tmp_path, cache_dir):
  from unity_jax.eval import html_report  # pylint: disable=g-import-not-at-top
  # Batches 2 and 3 (steps 3-4: one whole log window) and 6 (half of steps 7-8) are NaN.
  status, output = run(tmp_path, "--config.train.debug_nan_steps=(2,3,6)",
                       "--config.train.nonfinite_policy=skip", "--config.train.log_every=2",
                       env=train_env(cache_dir))
  assert status == 0, output
  text = (tmp_path / "metrics.jsonl").read_text()
  assert "nan" not in text.lower() and "Infinity" not in text
  windows = {w["step"]: w for w in metric_lines(tmp_path)}
  assert sorted(windows) == list(range(2, 21, 2))
  assert windows[4]["loss"] is None and windows[4]["skipped_steps"] == 2
  assert np.isfinite(windows[8]["loss"]) and windows[8]["skipped_steps"] == 1
  assert sum(w["skipped_steps"] for w in windows.values()) == 3
  assert read_json(tmp_path / "summary.json")["nonfinite_skipped"] == 3
  out = tmp_path / "report.html"
  html_report.write_report(str(out), {}, str(tmp_path))
  assert "loss_total.png" in out.read_text()


@pytest.mark.slow
def test_nonfinite_policy_stops_keeps_checkpoints_and_skip_resumes(tmp_path, cache_dir):
  env = train_env(cache_dir)
  nan = ["--config.train.debug_nan_steps=(4,5,6)", "--config.train.checkpoint_every=3"]
  status, output = run(tmp_path, *nan, env=env)
  assert status == 3, output
  assert "3 consecutive non-finite steps" in output
  assert f"last good checkpoint is {tmp_path}/checkpoints/6" in output
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
  assert not os.path.exists(tmp_path / "summary.json")
  # The same command with the skip policy resumes from step 6 and skips the third NaN step.
  status, output = run(tmp_path, *nan, "--config.train.nonfinite_policy=skip", env=env)
  assert status == 0, output
  assert "resumed from" in output and "checkpoints/6" in output
  summary = read_json(tmp_path / "summary.json")
  assert summary["step"] == 20 and summary["nonfinite_skipped"] == 3


@pytest.mark.slow
def test_sigkill_at_three_points_then_resume_gives_the_same_fingerprint(reference, tmp_path,
                                                                        cache_dir):
  _, summary, _, _ = reference
  env = train_env(cache_dir)
  overrides = ["--config.train.checkpoint_every=2", "--config.train.log_every=1"]
  for new_lines in (2, 4, 6):
    already = len(metric_lines(tmp_path))
    proc = start(tmp_path, *overrides, env=env)
    try:
      wait_for_lines(proc, tmp_path, already + new_lines)
    finally:
      kill_group(proc)
      proc.wait(timeout=60)
    assert not os.path.exists(tmp_path / "summary.json"), "the run ended before the kill"
  status, output = run(tmp_path, *overrides, env=env)
  assert status == 0, output
  assert "resumed from" in output
  assert fingerprints(read_json(tmp_path / "summary.json")) == fingerprints(summary)
  # Records of steps after the last checkpoint of a killed run are replaced, not duplicated.
  assert [w["step"] for w in metric_lines(tmp_path)] == list(range(1, 21))


@pytest.mark.slow
def test_sigterm_checkpoints_exits_zero_and_rerun_matches(reference, tmp_path, cache_dir):
  _, summary, _, _ = reference
  env = train_env(cache_dir)
  overrides = ["--config.train.log_every=1", "--config.train.checkpoint_every=100"]
  proc = start(tmp_path, *overrides, env=env)
  try:
    wait_for_lines(proc, tmp_path, 3)
    kill_group(proc, signal.SIGTERM)
    status = wait(proc, timeout=120)
  finally:
    kill_group(proc)
  output = (tmp_path / "train.out").read_text()
  assert status == 0, output
  assert "SIGTERM: stopped after step" in output
  steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 20 and steps[0] != 10, steps
  assert not os.path.exists(tmp_path / "summary.json")
  status, output = run(tmp_path, *overrides, env=env)
  assert status == 0, output
  assert f"checkpoints/{steps[0]}" in output
  assert fingerprints(read_json(tmp_path / "summary.json")) == fingerprints(summary)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_on_four_devices(reference, tmp_path, cache_dir):
  """2 processes x 2 devices == 1 process x 4 devices, bitwise.

  Both runs use jax.distributed's gloo CPU collectives (the single process as a one-process
  job): a plain single-process run reduces across its devices in-process, in another
  summation order, so it agrees only to float32 rounding (checked against the 1-device
  reference run below).
  """
  single = tmp_path / "single"
  status, output = run(single, env=train_env(
      cache_dir, devices=4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
      JAX_NUM_PROCESSES="1", JAX_PROCESS_ID="0"))
  assert status == 0, output
  expected = read_json(single / "summary.json")
  assert expected["mesh"]["data"] == 4 and expected["process_count"] == 1
  multi = tmp_path / "multi"
  port = free_port()
  procs = [start(multi, env=train_env(cache_dir, devices=2,
                                      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                      JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
                 log_name=f"process{i}") for i in range(2)]
  try:
    statuses = [wait(p) for p in procs]
  finally:
    for p in procs:
      kill_group(p)
  logs = [(multi / f"process{i}.out").read_text() for i in range(2)]
  assert statuses == [0, 0], logs
  summary = read_json(multi / "summary.json")
  assert summary["process_count"] == 2 and summary["step"] == 20
  assert fingerprints(summary) == fingerprints(expected)
  assert "done: step 20" in logs[0] and "done:" not in logs[1]     # only process 0 reports
  one_device = export.load_safetensors(reference[1]["export"])
  for name, value in export.load_safetensors(summary["export"]).items():
    np.testing.assert_allclose(value, one_device[name], atol=1e-5, rtol=0, err_msg=name)


def wait_for_checkpoint(proc, workdir, step, timeout=RUN_TIMEOUT):
  deadline = time.monotonic() + timeout
  path = os.path.join(workdir, "checkpoints", str(step))
  while not os.path.isdir(path):
    if proc.poll() is not None:
      raise AssertionError(f"unity-train exited with {proc.returncode} before checkpoint {step}")
    if time.monotonic() > deadline:
      kill_group(proc)
      raise TimeoutError(f"no checkpoint {step} after {timeout} s")
    time.sleep(0.02)


@pytest.mark.slow
def test_openuni_source_resumes_its_data_position_after_sigkill(tmp_path, cache_dir):
  data = tmp_path / "data"
  synth = subprocess.run(
      [sys.executable, "-m", "unity_jax.data.cli", "synth", "--out", str(data), "--clips", "32",
       "--frames", "5", "--size", "16", "16", "--workers", "1"],
      cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
  assert synth.returncode == 0, synth.stderr
  env = train_env(cache_dir)
  overrides = ["--config.train.data_source=openuni", f"--config.data.dir={data}",
               "--config.train.checkpoint_every=2"]
  status, output = run(tmp_path / "reference", *overrides, env=env)
  assert status == 0, output
  expected = read_json(tmp_path / "reference" / "summary.json")
  workdir = tmp_path / "interrupted"
  # Killed inside stage 0 (iterator state restored), then inside stage 1 after the stage-end
  # checkpoint 10 (stage 1's iterator starts fresh, then is restored from checkpoint 12+).
  for step in (4, 14):
    proc = start(workdir, *overrides, env=env)
    try:
      wait_for_checkpoint(proc, workdir, step)
    finally:
      kill_group(proc)
      proc.wait(timeout=60)
    assert not os.path.exists(workdir / "summary.json"), "the run ended before the kill"
  status, output = run(workdir, *overrides, env=env)
  assert status == 0, output
  assert fingerprints(read_json(workdir / "summary.json")) == fingerprints(expected)
