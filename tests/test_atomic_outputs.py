"""User-facing outputs are written atomically: a failure midway keeps the previous file whole and
leaves no temp file (eval JSON, report.html, safetensors exports, sample videos, io_utils)."""

import json
import os
import types

import numpy as np
import pytest

from unity_jax import io_utils
from unity_jax.eval import cli as eval_cli
from unity_jax.eval import html_report
from unity_jax.sample import pipeline as pipeline_lib
from unity_jax.sample import video_io
from unity_jax.train import export


def _only(directory, name):
  """Asserts `directory` holds `name` and nothing else (no temp files)."""
  assert sorted(os.listdir(directory)) == [name], os.listdir(directory)


def test_helpers_replace_whole_files_and_clean_up(tmp_path):
  path = tmp_path / "out.json"
  io_utils.atomic_write_json(str(path), {"a": 1})
  assert json.loads(path.read_text()) == {"a": 1}
  with pytest.raises(TypeError):
    io_utils.atomic_write_json(str(path), {"a": 2, "b": object()})
  assert json.loads(path.read_text()) == {"a": 1}
  with pytest.raises(RuntimeError, match="disk full"):
    with io_utils.atomic_path(str(path)) as tmp:
      assert tmp.endswith(".json") and os.path.dirname(tmp) == str(tmp_path)
      with open(tmp, "w") as f:
        f.write('{"a": 3')
      raise RuntimeError("disk full")
  assert json.loads(path.read_text()) == {"a": 1}
  _only(tmp_path, "out.json")
  io_utils.atomic_write_text(str(tmp_path / "new" / "page.html"), "<p>é</p>")
  assert (tmp_path / "new" / "page.html").read_text(encoding="utf-8") == "<p>é</p>"


def _partial_then_fail(path, *args, **kwargs):
  del args, kwargs
  with open(path, "wb") as f:
    f.write(b"half a file")
  raise OSError("No space left on device")


def test_export_failure_keeps_previous_export(tmp_path, monkeypatch):
  tree = {"a/w": np.ones((2, 3), np.float32), "b/bias": np.zeros((4,), np.float32)}
  index = export.export_safetensors(tree, str(tmp_path), kind="ema", step=1)
  before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(safetensors.numpy, "save_file",
                      lambda tensors, path, **kwargs: _partial_then_fail(path))
  with pytest.raises(OSError, match="No space"):
    export.export_safetensors({k: v + 1 for k, v in tree.items()}, str(tmp_path), kind="ema",
                              step=2)
  assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
  monkeypatch.undo()
  np.testing.assert_array_equal(export.load_safetensors(index)["a/w"], tree["a/w"])


@pytest.mark.parametrize("suffix", [".gif", ".png", ".npy"])
def test_sample_video_failure_keeps_previous_video(tmp_path, monkeypatch, suffix):
  path = tmp_path / f"sample{suffix}"
  video = np.full((3, 8, 8, 3), 200, np.uint8)
  video_io.write_video(str(path), video)
  before = path.read_bytes()
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(iio, "imwrite", _partial_then_fail)
  monkeypatch.setattr(np, "save", _partial_then_fail)
  with pytest.raises(OSError, match="No space"):
    video_io.write_video(str(path), video // 2)
  assert path.read_bytes() == before
  _only(tmp_path, path.name)


def test_report_html_failure_keeps_previous_report(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  out = tmp_path / "site" / "report.html"
  assert html_report.write_report(str(out), {"split": "eval"}, str(run)) == str(out)
  before = out.read_text(encoding="utf-8")
  # A lone surrogate cannot be encoded as UTF-8: the page fails while it is being written.
  with pytest.raises(UnicodeEncodeError):
    html_report.write_report(str(out), {"split": "eval \udc80"}, str(run))
  assert out.read_text(encoding="utf-8") == before
  assert sorted(os.listdir(out.parent)) == ["report.html", "report_files"]


def test_eval_json_failure_keeps_previous_json(tmp_path, monkeypatch):
  out = tmp_path / "eval.json"
  out.write_text(json.dumps({"previous": True}))
  from unity_jax.eval import unibench  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(unibench, "load_clips", lambda *args: [])
  monkeypatch.setattr(pipeline_lib.Pipeline, "from_workdir", staticmethod(
      lambda *args, **kwargs: types.SimpleNamespace(step=3, weights="ema")))
  # The serializer fails on the last key, after the others would have been streamed out.
  summary = {"results": {"rgb": {"model": {"pck": 0.5}}}, "headline": {}, "clips": {},
             "unserializable": object()}
  monkeypatch.setattr(unibench, "run", lambda *args, **kwargs: types.SimpleNamespace(
      summary=summary, samples=[]))
  args = eval_cli.build_parser().parse_args(
      ["--workdir", str(tmp_path), "--data", str(tmp_path), "--out", str(out)])
  with pytest.raises(TypeError, match="not JSON serializable"):
    eval_cli.evaluate(args)
  assert json.loads(out.read_text()) == {"previous": True}
  _only(tmp_path, "eval.json")
