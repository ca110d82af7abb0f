"""Tests of the grain input pipeline over in-memory sources (unity_jax.data.pipeline)."""

import json
import re
import pickle

import grain
import ml_collections
import numpy as np
import pytest

from unity_jax import constants
from unity_jax.data import examples
from unity_jax.data import modality_render
from unity_jax.data import pipeline
from unity_jax.data import prompts
from unity_jax.data import sampling
from unity_jax.model import text

T, H, W = 2, 4, 6
SOURCE_SIZES = {"single_person": 5, "two_person": 7, "general": 11, "subject_centric": 13}
CORRUPT = b"corrupt!"


def make_clip(source: str, index: int, available=constants.MODALITIES) -> dict:
  """A tiny clip whose pixels identify it: rgb[0,0,0,0] = index, [0,0,0,1] = source id, and
  channel 2 holds the column number, so a horizontal flip is visible. Modality videos hold
  100 + column in channel 0 and their modality id in channel 1."""
  rgb = np.zeros((T, H, W, 3), np.uint8)
  rgb[..., 2] = np.arange(W, dtype=np.uint8)
  rgb[0, 0, 0, 0] = index
  rgb[0, 0, 0, 1] = constants.source_id(source)
  videos = {}
  for name in constants.MODALITIES:
    video = np.zeros((T, H, W, 3), np.uint8)
    video[..., 0] = np.arange(W, dtype=np.uint8) + 100
    video[..., 1] = constants.modality_id(name)
    videos[name] = video
  return {"id": f"{source}-{index}", "source": source, "caption": "a ball rolls left",
          "person_count": index % 3, "segmentation_targets": "one person", "rgb": rgb,
          "modalities": videos, "available": {m: m in available for m in constants.MODALITIES}}


def decode(raw: bytes, where: str) -> dict:
  """Test codec (module level so grain workers can unpickle it)."""
  if raw == CORRUPT:
    raise examples.RecordError(f"{where}: bad bytes")
  return pickle.loads(raw)


def make_data(sizes=None, modalities_of=None, corrupt=()):
  """In-memory sources {source: [raw bytes]} and index rows {source: [row]}."""
  sizes = sizes or SOURCE_SIZES
  sources, rows = {}, {}
  for source, size in sizes.items():
    sources[source], rows[source] = [], []
    for i in range(size):
      mods = modalities_of(source, i) if modalities_of else constants.MODALITIES
      clip = make_clip(source, i, mods)
      raw = CORRUPT if (source, i) in corrupt else pickle.dumps(clip)
      sources[source].append(raw)
      rows[source].append({"id": clip["id"], "source": source,
                           "person_count": clip["person_count"],
                           "available": clip["available"]})
  return sources, rows


def make_config(**stage_overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(
      dir="", num_frames=T, height=H, width=W, caption_len=24, prompt_len=16,
      source_weights=(1, 1, 1, 1), worker_count=0, prefetch_buffer=2, skip_corrupt=False,
      flip_augment=False))
  config.train = ml_collections.ConfigDict(dict(batch_size=8))
  stage = dict(name="all", steps=10, sources=constants.SOURCES, modalities=constants.MODALITIES,
               modality_weights=(1.0,) * 5, max_person_count=-1,
               task_probs=ml_collections.ConfigDict(dict(control=0.25, estimate=0.25,
                                                         joint=0.5)))
  stage.update(stage_overrides)
  config.stages = [ml_collections.ConfigDict(stage)]
  return config


def make_batches(config, data=None, process_index=0, process_count=1):
  sources, rows = data or make_data()
  return pipeline.build_batch_dataset(
      sources, rows, plan=sampling.plan_from_config(config, 0),
      options=examples.options_from_config(config), global_batch=config.train.batch_size,
      seed=config.seed, process_index=process_index, process_count=process_count,
      decode_fn=decode)


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def record_ids(batch):
  """[(source_id, record index)] of a batch, read from the identifying pixels."""
  return list(zip(batch["rgb"][:, 0, 0, 0, 1].tolist(), batch["rgb"][:, 0, 0, 0, 0].tolist()))


def assert_same(batches_a, batches_b):
  for a, b in zip(batches_a, batches_b, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_contract():
  batch = make_batches(make_config())[0]
  batch = dict(batch)
  skipped = batch.pop(examples.SKIPPED_KEY)
  assert skipped.tolist() == [0] * 8
  # prompt_len 16 cuts every modality prompt; the 19-token caption fits caption_len 24.
  np.testing.assert_array_equal(batch.pop(examples.TRUNCATED_KEY), [[0, 1]] * 8)
  expected = {
      "rgb": (np.uint8, (8, T, H, W, 3)), "modality_video": (np.uint8, (8, T, H, W, 3)),
      "modality_id": (np.int32, (8,)), "source_id": (np.int32, (8,)),
      "task_id": (np.int32, (8,)), "caption_tokens": (np.int32, (8, 24)),
      "caption_mask": (np.bool_, (8, 24)), "modality_prompt_tokens": (np.int32, (8, 16)),
      "modality_prompt_mask": (np.bool_, (8, 16))}
  assert {k: (v.dtype.type, v.shape) for k, v in batch.items()} == expected
  for row in range(8):
    name = constants.MODALITIES[batch["modality_id"][row]]
    np.testing.assert_array_equal(batch["modality_video"][row, ..., 1], batch["modality_id"][row])
    tokens, _ = text.tokenize([prompts.modality_prompt(name, "one person")], 16)
    np.testing.assert_array_equal(batch["modality_prompt_tokens"][row], tokens[0])
  assert text.detokenize(batch["caption_tokens"][:1]) == ["a ball rolls left"]


def test_every_batch_exactly_balanced_and_epochs_reshuffle():
  iterator = pipeline.make_iterator(make_batches(make_config()), worker_count=0)
  batches = take(iterator, 200)
  for step, batch in enumerate(batches):
    assert np.bincount(batch["source_id"], minlength=4).tolist() == [2, 2, 2, 2], step
  # single_person has 5 records: each run of 5 draws from it is one epoch, a permutation.
  draws = [i for b in batches for s, i in record_ids(b) if s == 0]
  epochs = [draws[e * 5:(e + 1) * 5] for e in range(len(draws) // 5)]
  assert all(sorted(epoch) == list(range(5)) for epoch in epochs)
  assert len({tuple(epoch) for epoch in epochs}) > 1, "every epoch has the same order"


def test_weighted_sources_and_stage_source_filter():
  config = make_config(sources=("single_person", "general", "subject_centric"))
  config.data.source_weights = (2, 5, 1, 1)  # two_person's weight is unused by this stage
  for batch in take(pipeline.make_iterator(make_batches(config)), 50):
    assert np.bincount(batch["source_id"], minlength=4).tolist() == [4, 0, 2, 2]
  config.train.batch_size = 6
  with pytest.raises(ValueError, match="divisible by 4"):
    make_batches(config)


def test_two_processes_are_balanced_and_disjoint():
  config = make_config()
  iterators = [pipeline.make_iterator(make_batches(config, process_index=p, process_count=2))
               for p in range(2)]
  per_process = [take(it, 200) for it in iterators]
  for step in range(200):
    local = [np.bincount(b[step]["source_id"], minlength=4).tolist() for b in per_process]
    assert local == [[1, 1, 1, 1], [1, 1, 1, 1]], step
    union = np.concatenate([b[step]["source_id"] for b in per_process])
    assert np.bincount(union, minlength=4).tolist() == [2, 2, 2, 2], step
  seen = [{r for b in batches for r in record_ids(b)} for batches in per_process]
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == sum(SOURCE_SIZES.values())


def test_modality_and_task_frequencies_follow_config_weights():
  weights = (0.4, 0.3, 0.2, 0.1, 0.0)
  config = make_config(modality_weights=weights)
  batches = take(pipeline.make_iterator(make_batches(config)), 200)
  modality = np.concatenate([b["modality_id"] for b in batches])
  task = np.concatenate([b["task_id"] for b in batches])
  n = len(modality)
  for ids, probs in ((modality, weights), (task, (0.25, 0.25, 0.5))):
    counts = np.bincount(ids, minlength=len(probs))
    for count, p in zip(counts, probs):
      assert abs(count - n * p) <= 4 * np.sqrt(n * p * (1 - p)) + 1e-9, (counts, probs)


def _flow_or_nothing(source, index):
  return ("flow",) if index % 2 else ()


@pytest.mark.parametrize("policy", ["rgb_only", "drop"])
def test_records_without_stage_modality(policy):
  config = make_config(modalities=("depth", "flow"), modality_weights=(0.9, 0.1))
  config.data.no_modality = policy
  data = make_data(modalities_of=_flow_or_nothing)
  batches = take(pipeline.make_iterator(make_batches(config, data)), 30)
  for batch in batches:
    odd = batch["rgb"][:, 0, 0, 0, 0] % 2 == 1
    assert (batch["modality_id"][odd] == constants.modality_id("flow")).all()
    none = ~odd
    if policy == "drop":
      assert not none.any()
      continue
    assert (batch["modality_id"][none] == -1).all()
    assert (batch["task_id"][none] == constants.task_id("control")).all()
    assert not batch["modality_video"][none].any()
    empty, _ = text.tokenize([""], 16)
    assert (batch["modality_prompt_tokens"][none] == empty[0]).all()


def test_max_person_count_filter():
  config = make_config(max_person_count=0)
  for batch in take(pipeline.make_iterator(make_batches(config)), 20):
    assert (batch["rgb"][:, 0, 0, 0, 0] % 3 == 0).all()  # person_count = index % 3


def test_same_seed_same_batches_other_seed_differs():
  config = make_config()
  first = take(pipeline.make_iterator(make_batches(config)), 10)
  again = take(pipeline.make_iterator(make_batches(config)), 10)
  assert_same(first, again)
  config.seed = 1
  other = take(pipeline.make_iterator(make_batches(config)), 10)
  assert any(not np.array_equal(a["rgb"], b["rgb"]) for a, b in zip(first, other))


def test_restored_iterator_continues_identically():
  config = make_config()
  iterator = pipeline.make_iterator(make_batches(config))
  take(iterator, 7)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 5)
  restored = pipeline.make_iterator(make_batches(config))
  restored.set_state(state)
  assert_same(take(restored, 5), expected)


def test_orbax_checkpoint_of_iterator(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  config = make_config()
  iterator = pipeline.make_iterator(make_batches(config))
  take(iterator, 3)
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(tmp_path / "data", args=grain.checkpoint.CheckpointSave(iterator))
  expected = take(iterator, 5)
  restored = pipeline.make_iterator(make_batches(config))
  checkpointer.restore(tmp_path / "data", args=grain.checkpoint.CheckpointRestore(restored))
  assert_same(take(restored, 5), expected)


def test_corrupt_record_raises_naming_it():
  data = make_data(corrupt={("two_person", 3)})
  iterator = pipeline.make_iterator(make_batches(make_config(), data))
  with pytest.raises(examples.RecordError, match="'two_person' record 3"):
    take(iterator, 20)


def test_corrupt_records_counted_and_skipped_keeping_balance():
  config = make_config()
  config.data.skip_corrupt = True
  data = make_data(corrupt={("two_person", 3), ("general", 0), ("general", 1)})
  iterator = pipeline.make_iterator(make_batches(config, data))
  batches = take(iterator, 40)  # >= 5 epochs of two_person, 3 epochs of general
  for batch in batches:
    assert np.bincount(batch["source_id"], minlength=4).tolist() == [2, 2, 2, 2]
  seen = {r for b in batches for r in record_ids(b)}
  assert not seen & {(1, 3), (2, 0), (2, 1)}
  assert iterator.skipped_corrupt >= 5 + 2 * 3
  state = iterator.get_state()
  assert state["skipped_corrupt"] == iterator.skipped_corrupt


def test_wrong_record_shape_is_a_clear_error():
  config = make_config()
  config.data.height = H + 1
  with pytest.raises(ValueError, match=r"record \d+: rgb is uint8 \[2, 4, 6, 3\].*\[2, 5, 6, 3\]"):
    make_batches(config)[0]


def test_flip_augment_mirrors_rgb_and_flip_safe_modalities_only():
  config = make_config(modalities=("depth", "flow", "skeleton"), modality_weights=(1, 1, 1))
  config.data.flip_augment = True
  batches = take(pipeline.make_iterator(make_batches(config)), 30)
  flow_video = make_clip("general", 0)["modalities"]["flow"]
  flipped = {"depth": 0, "flow": 0, "skeleton": 0}
  for batch in batches:
    for row in range(8):
      name = constants.MODALITIES[batch["modality_id"][row]]
      rgb_flipped = batch["rgb"][row, 1, 0, 0, 2] == W - 1
      flipped[name] += rgb_flipped
      caption = text.detokenize(batch["caption_tokens"][row:row + 1])[0]
      assert caption == ("a ball rolls right" if rgb_flipped else "a ball rolls left")
      if name == "flow":  # mirrored and its horizontal component negated
        expected = modality_render.mirror_flow_video(flow_video) if rgb_flipped else flow_video
        np.testing.assert_array_equal(batch["modality_video"][row], expected)
      else:
        assert rgb_flipped == (batch["modality_video"][row, 0, 0, 0, 0] == 100 + W - 1)
  assert flipped["depth"] > 0 and flipped["flow"] > 0 and flipped["skeleton"] == 0


def test_swap_left_right_keeps_case():
  assert examples.swap_left_right("Left hand moves right, leftward") == (
      "Right hand moves left, rightward")


def test_plan_validation_errors():
  config = make_config(modality_weights=(1.0, 1.0))
  with pytest.raises(ValueError, match="one entry per modality"):
    sampling.plan_from_config(config, 0)
  with pytest.raises(ValueError, match="out of range"):
    sampling.plan_from_config(make_config(), 3)
  with pytest.raises(ValueError, match="unknown modality"):
    sampling.plan_from_config(make_config(modalities=("depht",), modality_weights=(1.0,)), 0)


def test_batch_counts_names_everything():
  batch = {"source_id": np.array([0, 1, 1]), "modality_id": np.array([-1, 0, 4]),
           "task_id": np.array([0, 2, 1])}
  counts = pipeline.batch_counts(batch)
  assert counts["source"] == {"single_person": 1, "two_person": 2, "general": 0,
                              "subject_centric": 0}
  assert counts["modality"]["none"] == 1 and counts["modality"]["densepose"] == 1
  # The RGB-only sample is text-to-video whatever its routing task id.
  assert counts["task"] == {"control": 0, "estimate": 1, "joint": 1, "t2v": 1}


# OpenUni directories (reader.py) ----------------------------------------------------------------

READER_SIZES = {"single_person": 4, "two_person": 5, "general": 3, "subject_centric": 6}


def _some_available(source, index):
  return constants.MODALITIES[index % 5:] or ("depth",)


@pytest.fixture(scope="module")
def openuni_dir(tmp_path_factory):
  from unity_jax.data import writer  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("openuni"))
  clips = [make_clip(source, i, _some_available(source, i))
           for source, size in READER_SIZES.items() for i in range(size)]
  writer.write_clips(clips, data_dir, "train", clips_per_shard=2)
  return data_dir


def corrupt_record(data_dir, source, index):
  """Flips one byte inside record `index` of `source` in its shard (size stays the same)."""
  import glob  # pylint: disable=g-import-not-at-top
  from unity_jax.data import record  # pylint: disable=g-import-not-at-top
  encoded = record.encode_record(make_clip(source, index, _some_available(source, index)))
  for path in glob.glob(f"{data_dir}/train/{source}-*.array_record"):
    content = bytearray(open(path, "rb").read())
    start = content.find(encoded)
    if start >= 0:
      content[start + len(encoded) // 2] ^= 0xFF
      open(path, "wb").write(bytes(content))
      return path
  raise AssertionError(f"record {source} {index} not found")


def test_train_iterator_over_openuni_reader(openuni_dir):
  config = make_config()
  config.data.dir = openuni_dir
  iterator = pipeline.make_train_iterator(config, 0)
  seen = set()
  for batch in take(iterator, 25):
    assert np.bincount(batch["source_id"], minlength=4).tolist() == [2, 2, 2, 2]
    for row, (source, index) in enumerate(record_ids(batch)):
      seen.add((source, index))
      name = constants.MODALITIES[batch["modality_id"][row]]
      assert name in _some_available(constants.SOURCES[source], index)
  assert len(seen) == sum(READER_SIZES.values())
  iterator.close()


def test_corrupt_shard_record_named_or_counted(openuni_dir, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / "openuni")
  shutil.copytree(openuni_dir, data_dir)
  path = corrupt_record(data_dir, "two_person", 3)  # shards of 2: second record of shard 1
  config = make_config()
  config.data.dir = data_dir
  with pytest.raises(examples.RecordError, match=re.escape(f"{path} record 1: ")):
    take(pipeline.make_train_iterator(config, 0), 10)
  config.data.skip_corrupt = True
  iterator = pipeline.make_train_iterator(config, 0)
  batches = take(iterator, 10)
  assert (1, 3) not in {r for b in batches for r in record_ids(b)}
  assert iterator.skipped_corrupt >= 3  # 10 batches * 2 = 20 draws = 4 epochs of two_person


CONFIG_FILE = f'''
from unity_jax import config as config_lib
from unity_jax import constants

def get_config(arg=None):
  config = config_lib.base_config()
  config.data.update(num_frames={T}, height={H}, width={W}, caption_len=24, prompt_len=16)
  config.train.batch_size = 8
  config.stages = [config_lib.stage("all", 10, constants.SOURCES, constants.MODALITIES,
                                    max_person_count=-1)]
  return config
'''


def test_inspect_prints_counts_and_writes_contact_sheet(openuni_dir, tmp_path):
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from unity_jax.data import inspect as inspect_lib  # pylint: disable=g-import-not-at-top
  config_path = tmp_path / "cfg.py"
  config_path.write_text(CONFIG_FILE)
  sheet = tmp_path / "sheet.png"
  out = io.StringIO()
  inspect_lib.main(["--data", openuni_dir, "--config", str(config_path), "--batches", "3",
                    "--json", "--sheet", str(sheet)], out=out)
  lines = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [line["batch"] for line in lines[:3]] == [0, 1, 2]
  for line in lines[:3]:
    assert line["source"] == {s: 2 for s in constants.SOURCES}
    assert sum(line["modality"].values()) == sum(line["task"].values()) == 8
  assert lines[3] == {"skipped_corrupt": 0}
  # prompt_len 16 cuts every modality prompt: counted in the batches and in the data's lengths.
  lengths = lines[4]["text_lengths"]
  assert lengths["caption"]["truncated"] == 0 and lengths["caption"]["max_len"] == 24
  assert lengths["prompt"]["truncated"] == lengths["prompt"]["count"] > 0
  assert lengths["prompt"]["min"] > 16 and lengths["prompt"]["max_len"] == 16
  assert 0 < lines[4]["truncated_in_batches"]["prompts"] <= 24
  assert lines[4]["truncated_in_batches"]["captions"] == 0
  image = Image.open(sheet)
  scale = -(-inspect_lib.SHEET_MIN_FRAME_HEIGHT // H)
  assert image.size == (2 * T * W * scale + 6, 8 * (H * scale + 14))
  table = io.StringIO()
  inspect_lib.main(["--data", openuni_dir, "--config", str(config_path), "--batches", "2"],
                   out=table)
  text_lines = table.getvalue().splitlines()
  assert text_lines[1].startswith("batch | single_person two_person general subject_centric")
  assert text_lines[2].startswith("    0 |             2          2       2               2 |")
  assert any(line.startswith("warning: ") and "prompts are truncated to data.prompt_len=16"
             in line for line in text_lines)


def test_inspect_reports_bad_input_with_exit_status_2(tmp_path, capsys):
  from unity_jax.data import inspect as inspect_lib  # pylint: disable=g-import-not-at-top
  config_path = tmp_path / "cfg.py"
  config_path.write_text(CONFIG_FILE)
  status = inspect_lib.main(["--data", str(tmp_path / "missing"), "--config", str(config_path)])
  assert status == 2
  assert "manifest.json does not exist" in capsys.readouterr().err
