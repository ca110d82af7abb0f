"""OpenUni as a tensorflow-datasets builder (ArrayRecord files, no TensorFlow needed).

The builder reads an OpenUni data directory (given as the manual directory) and writes a TFDS
dataset with native features, so TFDS users open it with `tfds.data_source`, also in a process
that never imports unity_jax (the features are stored in the dataset's own metadata):

  build_tfds("data/openuni", "data/tfds")                      # once
  source = tfds.data_source("open_uni/clips", data_dir="data/tfds")["train"]
  clip = tfds_example_to_clip(source[0])                       # the schema.py clip dict

Configs: "clips" (no ground truth, every split) and "clips_with_gt" (only splits whose every
record has all seven gt arrays). Precomputed latents and caption embeddings are not exported.
"""

import dataclasses
from typing import Any, Mapping

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from unity_jax import constants
from unity_jax.data import reader as reader_lib
from unity_jax.data import schema

TFDS_NAME = "open_uni"


@dataclasses.dataclass
class OpenUniConfig(tfds.core.BuilderConfig):
  with_gt: bool = False


def _video_feature(channels: int | None = 3, dtype=np.uint8):
  shape = (None, None, None) if channels is None else (None, None, None, channels)
  return tfds.features.Tensor(shape=shape, dtype=dtype, encoding="zlib")


def _gt_features() -> dict:
  features = {}
  for name, (dtype, pattern) in schema.GT_SPECS.items():
    shape = tuple(p if isinstance(p, int) else None for p in pattern)
    features[name] = tfds.features.Tensor(shape=shape, dtype=dtype, encoding="zlib")
  return features


class OpenUni(tfds.core.GeneratorBasedBuilder):
  """OpenUni v1 clips: caption, person count, RGB video and five rendered modality videos."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "OpenUni schema version 1."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Set the manual directory to an OpenUni data directory (made by `unity-data synth` or "
      "`unity-data convert`), e.g. build_tfds(openuni_dir, tfds_dir).")
  BUILDER_CONFIGS = [
      OpenUniConfig(name="clips", description="Clips without ground truth.", with_gt=False),
      OpenUniConfig(name="clips_with_gt", description="Clips with evaluation ground truth.",
                    with_gt=True),
  ]

  # tfds's default code_path probes `importlib_resources` (a Python < 3.9 backport that is not
  # installed) for builders defined outside its own package; this module's file is the answer.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        "id": tfds.features.Text(),
        "source": tfds.features.ClassLabel(names=list(constants.SOURCES)),
        "caption": tfds.features.Text(),
        "person_count": tfds.features.Scalar(np.int32),
        "segmentation_targets": tfds.features.Text(),
        "rgb": _video_feature(),
        "modalities": {name: _video_feature() for name in constants.MODALITIES},
        "available": {name: tfds.features.Scalar(np.bool_) for name in constants.MODALITIES},
    }
    if self.builder_config.with_gt:
      features["gt"] = _gt_features()
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 description=__doc__)

  def _split_generators(self, dl_manager):
    reader = reader_lib.OpenUniReader(dl_manager.manual_dir)
    splits = [s for s in reader.splits if not self.builder_config.with_gt or _has_full_gt(
        reader.split_entry(s))]
    if not splits:
      raise ValueError(f"{dl_manager.manual_dir}: no split has ground truth in every record; "
                       f"write one with `unity-data synth --split eval` (gt by default)")
    return {split: self._generate_examples(reader, split) for split in splits}

  def _generate_examples(self, reader, split):
    skip = () if self.builder_config.with_gt else ("gt",)
    for source in reader.sources(split):
      for clip in reader.source(split, source, skip=skip + ("latents", "caption_embedding")):
        example = {key: clip[key] for key in schema.METADATA_FIELDS}
        example.update(rgb=clip["rgb"], modalities=clip["modalities"], available=clip["available"])
        if self.builder_config.with_gt:
          example["gt"] = clip["gt"]
        yield clip["id"], example


def _has_full_gt(entry: Mapping[str, Any]) -> bool:
  arrays = entry["arrays"]
  return entry["num_records"] > 0 and all(
      sum(arrays.get(f"gt/{name}", {}).get("shapes", {}).values()) == entry["num_records"]
      for name in schema.GT_SPECS)


def build_tfds(openuni_dir: str, tfds_dir: str, config: str = "clips") -> OpenUni:
  """Builds (or reuses) the TFDS dataset `open_uni/<config>` under `tfds_dir`; returns it."""
  builder = OpenUni(data_dir=tfds_dir, config=config, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=openuni_dir))
  return builder


def tfds_example_to_clip(example: Mapping[str, Any]) -> dict[str, Any]:
  """Converts a `tfds.data_source` example (bytes text, int label) to the schema.py clip dict."""
  clip = {key: example[key] for key in ("rgb", "modalities")}
  for key in ("id", "caption", "segmentation_targets"):
    value = example[key]
    clip[key] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
  clip["source"] = constants.SOURCES[int(example["source"])]
  clip["person_count"] = int(example["person_count"])
  clip["available"] = {name: bool(flag) for name, flag in example["available"].items()}
  if "gt" in example:
    clip["gt"] = dict(example["gt"])
  return clip
