"""Per-sample work of the input pipeline: decode one record, validate it, apply the sample's
draws (modality, task, flip) and tokenize its texts into a contract example.

Runs inside grain (possibly in worker processes), so everything here is picklable.
"""

import dataclasses
import functools
import re
from typing import Any, Callable

import numpy as np

from unity_jax import constants
from unity_jax.data import modality_render
from unity_jax.data import prompts
from unity_jax.data import sampling
from unity_jax.model import text

from unity_jax.data.schema import RecordError  # Corrupt data; the message names where.

SKIPPED_KEY = "_skipped_corrupt"
"""Internal per-example field: corrupt records skipped to produce it (removed by BatchIterator)."""
TRUNCATED_KEY = "_truncated_text"
"""Internal per-example field: int32 [2], whether its caption and its modality prompt were cut
to caption_len / prompt_len (counted and reported by BatchIterator, removed from batches)."""

FLIP_SAFE_MODALITIES = ("depth", "segmentation", "flow")
"""Modalities that stay correct under a horizontal flip of the frames (flow is decoded, its
horizontal component negated and re-rendered: modality_render.mirror_flow_video). Not skeleton
or densepose (left/right body parts would need swapping)."""

MAX_CORRUPT_IN_A_ROW = 64
"""With skip_corrupt, give up (raise) after this many consecutive corrupt records."""


@dataclasses.dataclass(frozen=True)
class ExampleOptions:
  """Record shape and text lengths the config expects, and the augmentation switches."""
  num_frames: int
  height: int
  width: int
  caption_len: int = 64
  prompt_len: int = 32
  flip_augment: bool = False
  skip_corrupt: bool = False

  @property
  def video_shape(self) -> tuple[int, int, int, int]:
    return (self.num_frames, self.height, self.width, 3)


def options_from_config(config: Any) -> ExampleOptions:
  """Reads config.data: num_frames, height, width, caption_len, prompt_len, flip_augment,
  skip_corrupt."""
  data = config.data
  return ExampleOptions(
      num_frames=int(data.num_frames), height=int(data.height), width=int(data.width),
      caption_len=int(data.caption_len), prompt_len=int(data.prompt_len),
      flip_augment=bool(data.flip_augment), skip_corrupt=bool(data.skip_corrupt))


TRAINING_SKIP = ("gt", "latents", "caption_embedding")
"""Record groups training batches do not use: not decompressed."""


def default_decode_fn() -> Callable[[bytes, str], dict]:
  """The OpenUni reader's `decode_record(raw, where) -> clip dict`, skipping TRAINING_SKIP."""
  from unity_jax.data import reader  # pylint: disable=g-import-not-at-top
  return functools.partial(reader.decode_record, skip=TRAINING_SKIP)


_LEFT_RIGHT = re.compile(r"\b(left|right)(?=\b|ward)", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
  """Swaps the words left/right (keeping case) so a caption stays true for a mirrored video."""
  def swap(match):
    word = match.group(1)
    other = "right" if word.lower() == "left" else "left"
    return other.capitalize() if word[0].isupper() else other
  return _LEFT_RIGHT.sub(swap, caption)


@functools.lru_cache(maxsize=256)
def _prompt_tokens(modality: str, targets: str | None, max_len: int):
  """(tokens int32 [max_len], mask bool [max_len], whether the prompt was truncated)."""
  prompt = prompts.modality_prompt(modality, targets)
  tokens, mask = text.tokenize([prompt], max_len)
  return tokens[0], mask[0], bool(text.truncated([prompt], max_len)[0])


def _describe(records: Any, source: str, record_index: int) -> str:
  """Where a record lives, for error messages (the reader's shard/offset when it offers it)."""
  where = getattr(records, "where", None)  # OpenUniSource.where: "<shard file> record <n>".
  if callable(where):
    return where(record_index)
  return f"source {source!r} record {record_index}"


def geometry_fix_hint(expected: tuple[int, ...], data_dir: str = "DIR",
                      config_spec: str | None = None) -> str:
  """How to fix clips whose shape differs from `expected` = (T, H, W, ...) of the config."""
  frames, height, width = expected[:3]
  spec = config_spec or "configs/NAME.py"
  return (f"re-run `unity-data synth --config {spec} --out {data_dir}` (same as --frames "
          f"{frames} --size {height} {width}; `unity-data convert --config {spec}` for real "
          f"videos) to write data of the config's geometry, or set config.data.num_frames, "
          f"height and width to the data's")


def _check_video(video: Any, expected: tuple[int, ...], where: str, field: str) -> np.ndarray:
  video = np.asarray(video)
  if video.shape != expected or video.dtype != np.uint8:
    raise ValueError(
        f"{where}: {field} is {video.dtype} {list(video.shape)}, but the config expects uint8 "
        f"{list(expected)} (config.data.num_frames, height, width); "
        + geometry_fix_hint(expected))
  return video


@dataclasses.dataclass(frozen=True, eq=False)
class ExampleBuilder:
  """The map function of one source: stream position k -> contract example.

  Attributes:
    source: source name.
    records: random-access raw record bytes of this source.
    order: position -> (epoch, record index) of this process's shard (a new order per epoch).
    available: bool [num_records, len(MODALITIES)] from the index rows.
    modality_weights: float [len(MODALITIES)] stage weights.
    task_probs: float [len(TASKS)].
  """
  source: str
  records: Any
  order: sampling.EpochOrder
  available: np.ndarray
  modality_weights: np.ndarray
  task_probs: np.ndarray
  seed: int
  stage_index: int
  options: ExampleOptions
  decode_fn: Callable[[bytes, str], dict]

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    skipped = 0
    while True:
      epoch, record_index = self.order.epoch_and_record(position)
      where = _describe(self.records, self.source, record_index)
      try:
        clip = self._load(epoch, record_index, where)
        break
      except RecordError:
        if not self.options.skip_corrupt:
          raise
        skipped += 1
        if skipped >= MAX_CORRUPT_IN_A_ROW:
          raise RecordError(f"{where}: {skipped} corrupt records in a row in source "
                            f"{self.source!r}; the data looks broken, not just a few records")
        # Substitute the next record of the same stream, so the batch keeps its source balance.
        position += 1
    example = self._example(clip, epoch, record_index, where)
    example[SKIPPED_KEY] = np.int32(skipped)
    return example

  def _load(self, epoch: int, record_index: int, where: str) -> dict:
    """The clip of `record_index`; raises RecordError for a corrupt one (latent_examples.py
    overrides it to read precomputed latents instead)."""
    del epoch  # The decoded record holds every stream; latent_examples reads only the drawn one.
    return self.decode_fn(self.records[record_index], where)

  def _draw(self, epoch: int, record_index: int) -> sampling.SampleDraw:
    """The sample's modality, task and flip: a pure function of (seed, stage, source, epoch,
    record), so every loader of the same record index draws the same."""
    return sampling.draw_sample(
        self.available[record_index], self.modality_weights, self.task_probs, seed=self.seed,
        stage_index=self.stage_index, source=self.source,
        epoch=epoch, record_index=record_index)

  def _example(self, clip: dict, epoch: int, record_index: int,
               where: str) -> dict[str, np.ndarray]:
    if clip.get("source", self.source) != self.source:
      raise ValueError(f"{where}: record says source {clip['source']!r} but is stored under "
                       f"{self.source!r}")
    shape = self.options.video_shape
    rgb = _check_video(clip["rgb"], shape, where, "rgb")
    draw = self._draw(epoch, record_index)
    if draw.modality_id == constants.NO_MODALITY:
      modality_name = "none"
      modality_video = np.zeros(shape, np.uint8)
    else:
      modality_name = constants.MODALITIES[draw.modality_id]
      videos = clip.get("modalities", {})
      if modality_name not in videos:
        raise ValueError(f"{where}: the index marks {modality_name!r} available but the record "
                         f"has only {sorted(videos)}")
      modality_video = _check_video(videos[modality_name], shape, where, modality_name)
    caption = str(clip.get("caption", ""))
    if (self.options.flip_augment and draw.flip
        and modality_name in ("none", *FLIP_SAFE_MODALITIES)):
      rgb = rgb[:, :, ::-1]
      modality_video = (modality_render.mirror_flow_video(modality_video)
                        if modality_name == "flow" else modality_video[:, :, ::-1])
      caption = swap_left_right(caption)
    return {
        "rgb": np.ascontiguousarray(rgb),
        "modality_video": np.ascontiguousarray(modality_video),
        "modality_id": np.int32(draw.modality_id),
        "source_id": np.int32(constants.source_id(self.source)),
        "task_id": np.int32(draw.task_id),
        **token_fields(clip, caption, modality_name, self.options),
    }


def token_fields(clip: dict, caption: str, modality_name: str,
                 options: ExampleOptions) -> dict[str, np.ndarray]:
  """caption_tokens/mask [Lc], modality_prompt_tokens/mask [Lm] and TRUNCATED_KEY of a sample
  whose (possibly flipped) caption is `caption` and drawn modality `modality_name`."""
  caption_tokens, caption_mask = text.tokenize([caption], options.caption_len)
  targets = clip.get("segmentation_targets") if modality_name == "segmentation" else None
  prompt_tokens, prompt_mask, prompt_cut = _prompt_tokens(modality_name, targets,
                                                          options.prompt_len)
  caption_cut = bool(text.truncated([caption], options.caption_len)[0])
  return {"caption_tokens": caption_tokens[0], "caption_mask": caption_mask[0],
          "modality_prompt_tokens": prompt_tokens, "modality_prompt_mask": prompt_mask,
          TRUNCATED_KEY: np.asarray([caption_cut, prompt_cut], np.int32)}
