"""`unity-data synth` with the real synthetic world: balance, determinism, gt, resume; CLI."""

import importlib
import json
import pathlib

import numpy as np
import pytest

from unity_jax import constants
from unity_jax.data import cli
from unity_jax.data import synthetic
from unity_jax.data.reader import OpenUniReader

SHAPE = ["--frames", "5", "--size", "16", "16"]


def _synth(out, *args):
  return cli.main(["synth", "--out", str(out), *SHAPE, *map(str, args)])


def test_two_workers_write_balanced_deterministic_clips(tmp_path, capsys):
  assert _synth(tmp_path, "--clips", 8, "--workers", 2, "--clips-per-shard", 1, "--seed", 3) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["per_source"] == {s: 2 for s in constants.SOURCES}
  reader = OpenUniReader(str(tmp_path))
  entry = reader.split_entry("train")
  assert not any(name.startswith("gt/") for name in entry["arrays"])  # train: no gt by default
  assert len(entry["shards"]) == 8
  for source in constants.SOURCES:
    clips = reader.source("train", source)
    assert [c["id"] for c in clips] == [f"synth-{source}-3", f"synth-{source}-4"]
    expected = synthetic.generate_clip(4, source, num_frames=5, height=16, width=16)
    np.testing.assert_array_equal(clips[1]["rgb"], expected["rgb"])  # Same as in-process.
    assert clips[1]["caption"] == expected["caption"]


def test_eval_split_has_gt_and_held_out_seeds(tmp_path):
  assert _synth(tmp_path, "--clips", 4, "--workers", 1, "--split", "eval") == 0
  reader = OpenUniReader(str(tmp_path))
  clip = reader.source("eval", "two_person")[0]
  assert clip["id"] == f"synth-two_person-{synthetic.eval_seed(0)}"
  assert set(clip["gt"]) == set(synthetic.GT_KEYS)
  assert clip["gt"]["keypoints"].shape[0] == 5


def test_interrupted_synth_resumes_without_regenerating(tmp_path, monkeypatch, capsys):
  reference = tmp_path / "reference"
  assert _synth(reference, "--clips", 12, "--workers", 1, "--clips-per-shard", 2) == 0
  real_generate = synthetic.generate_clip
  calls = []

  def dying_generate(seed, source, **kwargs):
    calls.append((seed, source))
    if len(calls) == 10:
      raise RuntimeError("killed (simulated)")
    return real_generate(seed, source, **kwargs)

  monkeypatch.setattr(synthetic, "generate_clip", dying_generate)
  out = tmp_path / "resumed"
  assert _synth(out, "--clips", 12, "--workers", 1, "--clips-per-shard", 2) == 2
  assert "killed" in capsys.readouterr().err
  calls.clear()
  monkeypatch.setattr(synthetic, "generate_clip", lambda *a, **k: (calls.append(a),
                                                                   real_generate(*a, **k))[1])
  capsys.readouterr()
  assert _synth(out, "--clips", 12, "--workers", 1, "--clips-per-shard", 2) == 0
  summary = json.loads(capsys.readouterr().out)
  # Clips 0..8 were made; each source's first 2 (clips 0..7) filled complete shards.
  assert summary["resumed"] == 8 and summary["generated"] == 4 and len(calls) == 4
  want, got = OpenUniReader(str(reference)), OpenUniReader(str(out))
  assert want.index("train") == got.index("train")
  for row in want.index("train"):
    np.testing.assert_array_equal(got.source("train", row["source"])[row["position"]]["rgb"],
                                  want.source("train", row["source"])[row["position"]]["rgb"])


def test_inspect_dispatch_and_missing_module(monkeypatch, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["inspect", "--help"])
  assert exit_info.value.code == 0 and "--batches" in capsys.readouterr().out
  real_import = importlib.import_module

  def no_inspect(name, *args):
    if name == "unity_jax.data.inspect":
      raise ImportError("No module named 'unity_jax.data.inspect'")
    return real_import(name, *args)

  monkeypatch.setattr(importlib, "import_module", no_inspect)
  assert cli.main(["inspect", "--data", "x"]) == 2
  assert "not available" in capsys.readouterr().err


def test_export_tfds_command(tmp_path, capsys):
  assert _synth(tmp_path / "o", "--clips", 4, "--workers", 1, "--split", "eval") == 0
  capsys.readouterr()
  assert cli.main(["export-tfds", "--data", str(tmp_path / "o"), "--out", str(tmp_path / "t"),
                   "--config", "clips_with_gt"]) == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed["tfds_name"] == "open_uni/clips_with_gt" and printed["splits"] == {"eval": 4}


TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py")


def _tiny_geometry():
  from unity_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  data = config_lib.load_config(TINY).data
  return data.num_frames, data.height, data.width


def test_synth_config_sets_the_geometry_inspect_reads(tmp_path, capsys):
  # `unity-data synth --config C` writes what `unity-data inspect --config C` (and training) read.
  assert cli.main(["synth", "--out", str(tmp_path / "d"), "--config", TINY, "--clips", "4",
                   "--workers", "1"]) == 0
  frames, height, width = _tiny_geometry()
  assert json.loads(capsys.readouterr().out)["shape"] == [frames, height, width]
  assert cli.main(["inspect", "--data", str(tmp_path / "d"), "--config", TINY, "--batches", "1",
                   "--workers", "0", "--json"]) == 0
  assert json.loads(capsys.readouterr().out.splitlines()[0])["batch"] == 0
  # Explicit flags may repeat the config's geometry, not contradict it.
  assert cli.main(["synth", "--out", str(tmp_path / "e"), "--config", TINY, "--frames",
                   str(frames), "--size", str(height), str(width), "--clips", "0"]) == 0
  capsys.readouterr()
  assert cli.main(["synth", "--out", str(tmp_path / "e"), "--config", TINY,
                   "--frames", "17"]) == 2
  assert "--frames 17 contradicts --config" in capsys.readouterr().err


def test_geometry_mismatch_error_says_how_to_fix_it(tmp_path, capsys):
  assert _synth(tmp_path / "d", "--clips", 4, "--workers", 1) == 0  # 5x16x16, unlike tiny.
  frames, height, width = _tiny_geometry()
  capsys.readouterr()
  assert cli.main(["inspect", "--data", str(tmp_path / "d"), "--config", TINY]) == 2
  err = capsys.readouterr().err
  assert "4 clips of 5x16x16x3" in err and f"expects {frames}x{height}x{width}x3" in err
  assert f"re-run `unity-data synth --config {TINY} --out {tmp_path / 'd'}`" in err
  # The training pipeline fails the same way before decoding anything.
  from unity_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from unity_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(TINY)
  config.data.dir = str(tmp_path / "d")
  with pytest.raises(ValueError, match=r"re-run `unity-data synth --config configs/NAME.py"):
    pipeline.make_train_iterator(config, 0)
