"""`unity-data convert`: real mp4 files (libx264) -> OpenUni shards, bad-row handling, CLI."""

import csv
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from unity_jax import constants
from unity_jax.data import cli
from unity_jax.data import convert
from unity_jax.data.reader import OpenUniReader

FRAMES, HEIGHT, WIDTH = 21, 48, 64  # Landscape sources; converted to square 16x16 clips.
COLUMNS = ["video", "prompt", "depth", "raft", "segmentation", "skeleton", "densepose",
           "source", "person_count"]


def _write_video(path, colour, frames=FRAMES, height=HEIGHT, width=WIDTH):
  """A clip whose left/right thirds are black/white and centre is `colour`; the top rows'
  brightness encodes the frame number (10 * t) so temporal sampling can be checked."""
  video = np.zeros((frames, height, width, 3), np.uint8)
  video[:, :, width // 3: 2 * width // 3] = colour
  video[:, :, 2 * width // 3:] = 255
  for t in range(frames):
    video[t, : height // 4, width // 3: 2 * width // 3] = 10 * t
  os.makedirs(os.path.dirname(path), exist_ok=True)
  iio.imwrite(path, video, fps=8, codec="libx264")


@pytest.fixture(name="dataset")
def _dataset(tmp_path):
  """A manifest directory with three good rows' videos."""
  root = tmp_path / "raw"
  for name, colour in [("a", (200, 40, 40)), ("b", (40, 200, 40)), ("c", (40, 40, 200))]:
    _write_video(str(root / "videos" / f"{name}.mp4"), colour)
    for column in convert.MODALITY_COLUMNS:
      _write_video(str(root / column / f"{name}.mp4"), (90, 90, 90))
  return root


def _row(name, **overrides):
  row = {"video": f"videos/{name}.mp4", "prompt": f"clip {name}", "source": "", "person_count": ""}
  row.update({column: f"{column}/{name}.mp4" for column in convert.MODALITY_COLUMNS})
  row.update(overrides)
  return row


def _write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  return str(path)


def _convert(*args):
  return cli.main(["convert", "--frames", "5", "--size", "16", "16", *map(str, args)])


def test_converts_videos_with_missing_modalities_and_uniform_frames(dataset, tmp_path, capsys):
  manifest = _write_csv(dataset / "manifest.csv", [
      _row("a"),
      _row("b", skeleton="", densepose="", source="two_person"),
      _row("c", source="single_person", person_count="3", raft=""),
  ])
  out = tmp_path / "openuni"
  assert _convert("--manifest", manifest, "--out", out) == 0
  summary = json.loads(capsys.readouterr().out.splitlines()[0])
  assert summary["written"] == 3 and summary["skipped_bad"] == 0

  reader = OpenUniReader(str(out))
  rows = {row["source"]: row for row in reader.index("train")}
  assert set(rows) == {"general", "two_person", "single_person"}
  assert rows["general"]["available"] == constants.MODALITIES
  assert rows["two_person"]["available"] == ("depth", "flow", "segmentation")
  assert rows["single_person"]["available"] == ("depth", "segmentation", "skeleton", "densepose")
  assert [rows[s]["person_count"] for s in ("general", "two_person", "single_person")] == [-1, 2, 3]

  clip = reader.source("train", "two_person")[0]
  assert clip["caption"] == "clip b" and clip["rgb"].shape == (5, 16, 16, 3)
  assert not clip["modalities"]["skeleton"].any()  # Unavailable: stored black.
  # The centre crop keeps the coloured middle third and cuts the black/white sides off
  # (the crop is the central 48 of 64 columns: 8 columns of each side band survive).
  middle = clip["rgb"][:, 10:, 6:10].reshape(-1, 3).mean(0)
  np.testing.assert_allclose(middle, (40, 200, 40), atol=12)
  assert clip["rgb"][:, 10:, 0].mean() < 20 and clip["rgb"][:, 10:, -1].mean() > 235
  # Frames 0, 5, 10, 15, 20 of 21 (uniform over the whole video): brightness 10 * t.
  np.testing.assert_allclose(clip["rgb"][:, 1, 6:10].mean(axis=(1, 2)), [0, 50, 100, 150, 200],
                             atol=8)
  np.testing.assert_allclose(clip["modalities"]["depth"][:, 10:, 6:10].mean(), 90, atol=8)


def test_jsonl_manifest_and_two_workers(dataset, tmp_path):
  manifest = dataset / "manifest.jsonl"
  manifest.write_text("\n".join(json.dumps(_row(n, source="general")) for n in "abc") + "\n")
  out = tmp_path / "openuni"
  assert _convert("--manifest", manifest, "--out", out, "--workers", 2, "--split", "eval") == 0
  reader = OpenUniReader(str(out))
  assert reader.split_entry("eval")["counts"]["source"]["general"] == 3
  assert sorted(c["caption"] for c in reader.source("eval", "general")) == [
      "clip a", "clip b", "clip c"]


def test_bad_row_stops_with_row_column_and_file(dataset, tmp_path, capsys):
  manifest = _write_csv(dataset / "manifest.csv", [_row("a"), _row("b", depth="depth/nope.mp4")])
  assert _convert("--manifest", manifest, "--out", tmp_path / "o") == 2
  error = capsys.readouterr().err
  assert "row 2" in error and "column 'depth'" in error and "depth/nope.mp4" in error
  assert "does not exist" in error
  assert not (tmp_path / "o" / "manifest.json").exists()


def test_skip_bad_skips_counts_and_reports(dataset, tmp_path):
  (dataset / "videos" / "broken.mp4").write_bytes(os.urandom(3000))
  _write_video(str(dataset / "videos" / "short.mp4"), (1, 2, 3), frames=3)
  _write_video(str(dataset / "depth" / "tall.mp4"), (1, 2, 3), height=64, width=32)
  outside = tmp_path / "secret.mp4"
  _write_video(str(outside), (1, 2, 3))
  bad_rows = {
      2: ("video", "videos/broken.mp4", "not a readable video"),
      3: ("video", "videos/short.mp4", "fewer than the 5"),
      4: ("depth", "depth/tall.mp4", "not pixel-aligned"),
      5: ("video", str(outside), "absolute paths are not allowed"),
      6: ("raft", "../secret.mp4", "escapes the manifest's directory"),
      7: ("source", None, "is not one of"),
      8: ("prompt", None, "caption is empty"),
      9: ("person_count", None, "person_count must be an int"),
      10: ("video", "videos/a.mp4", "duplicate clip id"),
  }
  manifest = _write_csv(dataset / "manifest.csv", [
      _row("a"),
      _row("b", video="videos/broken.mp4"),
      _row("b", video="videos/short.mp4"),
      _row("b", depth="depth/tall.mp4"),
      _row("b", video=str(outside)),
      _row("b", raft="../secret.mp4"),
      _row("b", source="movies"),
      _row("b", prompt=" "),
      _row("b", person_count="two"),
      _row("a"),
      _row("c"),
  ])
  out = tmp_path / "o"
  assert _convert("--manifest", manifest, "--out", out, "--skip-bad") == 0
  report = json.loads((out / "convert_report_train.json").read_text())
  assert report["rows"] == 11 and report["written"] == 2 and report["skipped_bad"] == 9
  for entry in report["bad"]:
    column, file, problem = bad_rows[entry["row"]]
    assert entry["column"] == column and entry["file"] == file, entry
    assert problem in entry["error"], entry
  assert sorted(c["caption"] for c in OpenUniReader(str(out)).source("train", "general")) == [
      "clip a", "clip c"]


def test_frames_must_be_4k_plus_1(dataset, tmp_path, capsys):
  manifest = _write_csv(dataset / "m.csv", [_row("a")])
  assert cli.main(["convert", "--manifest", manifest, "--out", str(tmp_path), "--frames", "6"]) == 2
  assert "4k+1" in capsys.readouterr().err


def test_module_entry_point_runs_in_a_subprocess(dataset, tmp_path):
  manifest = _write_csv(dataset / "m.csv", [_row("a")])
  result = subprocess.run(
      [sys.executable, "-m", "unity_jax.data.cli", "convert", "--manifest", manifest, "--out",
       str(tmp_path / "o"), "--frames", "5", "--height", "8", "--width", "8"],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.splitlines()[0])["written"] == 1
  assert OpenUniReader(str(tmp_path / "o")).source("train", "general")[0]["rgb"].shape == (
      5, 8, 8, 3)


def test_config_sets_the_geometry(dataset, tmp_path, capsys):
  tiny = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "tiny.py")
  manifest = _write_csv(dataset / "manifest.csv", [_row("a")])
  out = tmp_path / "openuni"
  assert cli.main(["convert", "--config", tiny + ":smoke", "--manifest", manifest,
                   "--out", str(out)]) == 0
  assert json.loads(capsys.readouterr().out.splitlines()[0])["written"] == 1
  assert OpenUniReader(str(out)).source("train", "general")[0]["rgb"].shape == (5, 16, 16, 3)


def test_reports_captions_longer_than_caption_len(dataset, tmp_path, capsys):
  manifest = _write_csv(dataset / "manifest.csv", [_row("a", prompt="x" * 400), _row("b")])
  assert _convert("--manifest", manifest, "--out", tmp_path / "o") == 0
  out, err = capsys.readouterr()
  long = json.loads(out.splitlines()[0])["long_captions"]
  assert long == {"caption_len": 320, "count": 1, "max_tokens": 402, "rows": [1]}
  assert "1 caption(s) are longer than data.caption_len=320" in err
