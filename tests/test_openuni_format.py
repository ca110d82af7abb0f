"""OpenUni v1: record round trips, writer layout + manifest, resume after failures, reader, tfds."""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

from unity_jax import constants
from unity_jax.data import fakes
from unity_jax.data import record
from unity_jax.data import writer as writer_lib
from unity_jax.data.reader import OpenUniReader, RecordError, decode_record


def _clips(count, with_gt=True, **kwargs):
  """`count` fake clips, sources round-robin like `unity-data synth`."""
  return [fakes.fake_clip(i, constants.SOURCES[i % 4], with_gt=with_gt, **kwargs)
          for i in range(count)]


def _assert_same_clip(decoded, original):
  assert set(decoded) == set(original)
  for key in ("id", "source", "caption", "person_count", "segmentation_targets", "available"):
    assert decoded[key] == original[key], key
  np.testing.assert_array_equal(decoded["rgb"], original["rgb"])
  for group in ("modalities", "gt", "latents"):
    assert set(decoded.get(group, {})) == set(original.get(group, {}))
    for name, value in original.get(group, {}).items():
      assert decoded[group][name].dtype == value.dtype, (group, name)
      np.testing.assert_array_equal(decoded[group][name], value)


@pytest.mark.parametrize("codec", record.VIDEO_CODECS)
def test_record_round_trip_is_exact_for_every_codec(codec):
  clip = fakes.fake_clip(3, "two_person", with_gt=True, with_latents=True)
  decoded = decode_record(record.encode_record(clip, video_codec=codec))
  _assert_same_clip(decoded, clip)
  assert decoded["latents"]["rgb"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(decoded["caption_embedding"], clip["caption_embedding"])
  decoded["rgb"][0, 0, 0] = 7  # Decoded arrays are writable (augmentations may edit in place).


def test_auto_codec_compresses_only_where_it_pays():
  clip = fakes.fake_clip(0, with_gt=False)
  clip["modalities"]["depth"] = np.zeros_like(clip["rgb"])  # Compressible; rgb is noise.
  header = record.peek_metadata(record.encode_record(clip, video_codec="auto"))
  codecs = {spec["name"]: spec["codec"] for spec in header["arrays"]}
  assert codecs["rgb"] == "raw" and codecs["modalities/depth"] == "zlib"


def test_skip_leaves_groups_out_and_checks_only_what_it_decodes():
  clip = fakes.fake_clip(0, with_gt=True, with_latents=True)
  data = record.encode_record(clip)
  decoded = decode_record(data, skip=("gt", "rgb", "modalities"))
  assert "gt" not in decoded and "rgb" not in decoded and "modalities" not in decoded
  assert decoded["latents"]["depth"].shape == (2, 1, 1, 4)
  rgb_spec = record.peek_metadata(data)["arrays"][0]
  assert rgb_spec["name"] == "rgb"
  corrupt = bytearray(data)
  header_end = 16 + int.from_bytes(data[8:12], "little")
  corrupt[header_end + rgb_spec["offset"] + 3] ^= 0x10  # One bit of the rgb video.
  with pytest.raises(RecordError, match="rgb checksum mismatch"):
    decode_record(bytes(corrupt))
  # Skipping rgb skips its checksum too; everything returned is still exact.
  partial = decode_record(bytes(corrupt), skip=("rgb",))
  _assert_same_clip(partial | {"rgb": clip["rgb"]}, clip)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["modalities"].pop("flow"), "modalities"),
    (lambda c: c.update(rgb=c["rgb"].astype(np.float32)), "rgb has dtype float32"),
    (lambda c: c["modalities"].update(depth=c["rgb"][:, :4]), "modalities/depth has shape"),
    (lambda c: c["gt"].update(depth=c["gt"]["depth"][:-1]), "gt/depth has shape"),
    (lambda c: c["gt"].update(keypoints=c["gt"]["keypoints"][..., :2]), "gt/keypoints"),
    (lambda c: c.update(source="movies"), "source 'movies'"),
    (lambda c: c.update(person_count=-3), "person_count"),
    (lambda c: c["available"].update(depth="yes"), "available"),
    (lambda c: c.update(extra=1), "unknown fields"),
])
def test_encoding_an_invalid_clip_names_the_problem(mutate, message):
  clip = fakes.fake_clip(1, with_gt=True)
  mutate(clip)
  with pytest.raises(RecordError, match=message):
    record.encode_record(clip)


def test_writer_layout_manifest_and_reader(tmp_path):
  clips = _clips(10, with_gt=False)
  entry = writer_lib.write_clips(clips, str(tmp_path), "train", clips_per_shard=2)
  files = sorted(os.listdir(tmp_path / "train"))
  assert [f for f in files if f.endswith(".array_record")] == [
      "general-00000-of-00001.array_record",
      "single_person-00000-of-00002.array_record", "single_person-00001-of-00002.array_record",
      "subject_centric-00000-of-00001.array_record", "two_person-00000-of-00002.array_record",
      "two_person-00001-of-00002.array_record"]
  assert not (tmp_path / "train" / writer_lib.STAGING_DIR).exists()
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["schema_version"] == 1 and manifest["splits"]["train"] == entry
  assert entry["counts"]["source"] == {"single_person": 3, "two_person": 3, "general": 2,
                                       "subject_centric": 2}
  expected_modalities = {m: sum(c["available"][m] for c in clips) for m in constants.MODALITIES}
  assert entry["counts"]["modality"] == expected_modalities
  # Noise does not compress: "auto" stores it raw.
  assert entry["arrays"]["rgb"] == {"dtype": "uint8", "codecs": {"raw": 10},
                                    "shapes": {"5x8x8x3": 10}}
  assert not any(name.startswith("gt/") for name in entry["arrays"])

  reader = OpenUniReader(str(tmp_path))
  assert reader.splits == ("train",)
  by_id = {c["id"]: c for c in clips}
  for source in constants.SOURCES:
    rows = reader.index("train", source)
    clips_of_source = reader.source("train", source)
    assert len(clips_of_source) == len(rows) == entry["counts"]["source"][source]
    for row in rows:
      decoded = clips_of_source[row["position"]]
      assert decoded["id"] == row["id"] and decoded["source"] == source
      assert row["available"] == tuple(m for m in constants.MODALITIES if decoded["available"][m])
      assert row["person_count"] == decoded["person_count"]
      _assert_same_clip(decoded, by_id[row["id"]])
  with pytest.raises(KeyError, match="available"):
    reader.index("eval")


def test_raw_source_feeds_grain_with_decoding_in_the_map(tmp_path):
  import grain  # pylint: disable=g-import-not-at-top
  clips = _clips(8)
  writer_lib.write_clips(clips, str(tmp_path), "eval", clips_per_shard=3)
  raw = OpenUniReader(str(tmp_path)).source("eval", "general", decode=False, skip=("gt",))
  raw = pickle.loads(pickle.dumps(raw))  # As sent to grain worker processes.
  assert isinstance(raw[0], bytes)
  dataset = grain.MapDataset.source(raw).map_with_index(raw.decode)
  ids = [clip["id"] for clip in dataset]
  assert ids == [c["id"] for c in clips if c["source"] == "general"]
  assert "gt" not in dataset[0]


def test_failed_rewrite_keeps_old_data_and_resume_skips_staged_clips(tmp_path):
  data_dir = str(tmp_path)
  old = _clips(4)
  writer_lib.write_clips(old, data_dir, "train", clips_per_shard=1)
  new = [fakes.fake_clip(100 + i, constants.SOURCES[i % 4]) for i in range(12)]

  def failing(clips, fail_at):
    for i, clip in enumerate(clips):
      if i == fail_at:
        raise RuntimeError("disk full (simulated)")
      yield clip

  with pytest.raises(RuntimeError, match="disk full"):
    writer_lib.write_clips(failing(new, 9), data_dir, "train", clips_per_shard=2, signature="v2")
  # The previous run is untouched and still reads back.
  reader = OpenUniReader(data_dir)
  assert sorted(r["id"] for r in reader.index("train")) == sorted(c["id"] for c in old)
  assert reader.source("train", "general")[0]["id"] == old[2]["id"]
  reader.verify()

  with writer_lib.SplitWriter(data_dir, "train", clips_per_shard=2, signature="v2") as writer:
    # Sources got 3, 2, 2, 2 of the first 9 clips: 4 complete 2-clip shards were staged.
    assert writer.completed_keys == {new[i]["id"] for i in range(8)}
    added = [writer.add(clip) for clip in new]
  assert added == [False] * 8 + [True] * 4
  reader = OpenUniReader(data_dir)
  assert sorted(r["id"] for r in reader.index("train")) == sorted(c["id"] for c in new)
  reader.verify()
  for row in reader.index("train"):
    assert reader.source("train", row["source"])[row["position"]]["id"] == row["id"]
  shard_files = {s["file"] for s in reader.split_entry("train")["shards"]}
  on_disk = {f"train/{f}" for f in os.listdir(tmp_path / "train") if f.endswith(".array_record")}
  assert on_disk == shard_files  # The old run's one-clip shards are gone.


def test_crash_during_finalize_is_recovered_by_a_rerun(tmp_path, monkeypatch):
  data_dir, clips = str(tmp_path), _clips(6)
  real_read_manifest = writer_lib.read_manifest

  def crash(_):
    raise OSError("killed while writing the manifest (simulated)")

  monkeypatch.setattr(writer_lib, "read_manifest", crash)
  with pytest.raises(OSError, match="killed"):
    writer_lib.write_clips(clips, data_dir, "train", clips_per_shard=2, signature="s")
  assert not os.path.exists(tmp_path / "manifest.json")  # Shards moved, no manifest yet.
  monkeypatch.setattr(writer_lib, "read_manifest", real_read_manifest)
  with writer_lib.SplitWriter(data_dir, "train", clips_per_shard=2, signature="s") as writer:
    assert writer.completed_keys == {c["id"] for c in clips}
  reader = OpenUniReader(data_dir)
  reader.verify()
  assert sorted(r["id"] for r in reader.index("train")) == sorted(c["id"] for c in clips)


def test_duplicate_ids_and_concurrent_writers_are_rejected(tmp_path):
  clip = fakes.fake_clip(0)
  with pytest.raises(ValueError, match="duplicate clip id"):
    writer_lib.write_clips([clip, clip], str(tmp_path), "train")
  with writer_lib.SplitWriter(str(tmp_path), "train"):
    with pytest.raises(RuntimeError, match="another writer"):
      writer_lib.SplitWriter(str(tmp_path), "train")


def test_reader_reports_damaged_directories(tmp_path):
  data_dir = str(tmp_path)
  writer_lib.write_clips(_clips(4), data_dir, "train", clips_per_shard=4)
  shard = tmp_path / "train" / "general-00000-of-00001.array_record"
  shard.write_bytes(shard.read_bytes()[:-100])
  with pytest.raises(RecordError, match="general-00000-of-00001.array_record.*manifest says"):
    OpenUniReader(data_dir).source("train", "general")[0]
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  manifest["schema_version"] = 2
  (tmp_path / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(RecordError, match="schema version 2"):
    OpenUniReader(data_dir)


def test_tfds_data_source_opens_it_in_a_fresh_process(tmp_path):
  from unity_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
  openuni_dir, tfds_dir = str(tmp_path / "openuni"), str(tmp_path / "tfds")
  clips = _clips(6)
  writer_lib.write_clips(clips, openuni_dir, "eval", clips_per_shard=2)
  tfds_builder.build_tfds(openuni_dir, tfds_dir, config="clips_with_gt")
  script = textwrap.dedent(f"""
      import json, sys
      import tensorflow_datasets as tfds
      assert "unity_jax" not in sys.modules
      source = tfds.data_source("open_uni/clips_with_gt", data_dir={tfds_dir!r})["eval"]
      examples = [source[i] for i in range(len(source))]
      print(json.dumps({{e["id"].decode(): [int(e["rgb"].sum()), e["gt"]["depth"].shape[0]]
                         for e in examples}}))
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  seen = json.loads(result.stdout.strip().splitlines()[-1])
  assert seen == {c["id"]: [int(c["rgb"].sum()), 5] for c in clips}


def test_tfds_example_converts_back_to_the_clip_contract(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from unity_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
  clips = _clips(2, with_gt=False)
  writer_lib.write_clips(clips, str(tmp_path / "o"), "train")
  tfds_builder.build_tfds(str(tmp_path / "o"), str(tmp_path / "t"))
  source = tfds.data_source("open_uni/clips", data_dir=str(tmp_path / "t"))["train"]
  by_id = {c["id"]: c for c in clips}
  for i in range(len(source)):
    clip = tfds_builder.tfds_example_to_clip(source[i])
    _assert_same_clip(clip, by_id[clip["id"]])


def test_manifest_shard_files_must_stay_inside_the_data_dir(tmp_path):
  data_dir = tmp_path / "data"
  writer_lib.write_clips(_clips(4), str(data_dir), "train", clips_per_shard=4)
  outside = tmp_path / "outside.array_record"
  good = data_dir / "train" / "general-00000-of-00001.array_record"
  outside.write_bytes(good.read_bytes())
  (data_dir / "train" / "escape.array_record").symlink_to(outside)
  (data_dir / "train" / "alias.array_record").symlink_to(good)
  manifest_path = data_dir / "manifest.json"
  manifest = json.loads(manifest_path.read_text())
  number = next(i for i, s in enumerate(manifest["splits"]["train"]["shards"])
                if s["source"] == "general")
  for file, rule in [(str(outside), "must be a relative path inside the data directory"),
                     ("../outside.array_record", "no absolute path, no '..'"),
                     ("train/../../outside.array_record", "no absolute path, no '..'"),
                     ("train/escape.array_record", "outside the data directory"),
                     ("", "must be a relative path"), (None, "must be a relative path")]:
    manifest["splits"]["train"]["shards"][number]["file"] = file
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RecordError) as error:
      OpenUniReader(str(data_dir)).source("train", "general")[0]
    message = str(error.value)
    assert message.startswith(f"{manifest_path}: splits.train.shards[{number}]: file {file!r}")
    assert rule in message, message
  # A symlink that stays inside the directory is fine.
  manifest["splits"]["train"]["shards"][number]["file"] = "train/alias.array_record"
  manifest_path.write_text(json.dumps(manifest))
  assert OpenUniReader(str(data_dir)).source("train", "general")[0]["source"] == "general"
