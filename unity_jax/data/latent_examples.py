"""Per-sample work on precomputed data (config.data.precomputed): stored latents, not videos.

The latent path keeps everything of the shard path that decides *what* a batch slot holds:
per-source record selection (curriculum filter), the process shard, the EpochOrder shuffles,
the exact four-source mix and the per-record draws (`ExampleBuilder._draw`: modality, task).
Only loading differs: `LatentExampleBuilder` reads the drawn streams' latents with `read_clip`
(two chunks, not every modality) instead of decoding the ArrayRecord videos. So both paths
select the same clips in the same order and draw the same samples.

Texts: with model.text_encoder="builtin" the store holds no embeddings, so captions and
segmentation targets come from the shard record (decoded header-only, no videos) and are
tokenized as in the shard path; with "precomputed" the stored caption embedding and the drawn
modality's prompt embedding are used (RGB-only samples get the stored empty prompt), no shard
record is read, and masks come from the stored lengths.

Not applicable to latents, so refused by config.validate instead of skipped: data.flip_augment
(a stored latent or caption embedding cannot be mirrored).
"""

import dataclasses
import functools
from typing import Any

import ml_dtypes
import numpy as np

from unity_jax import constants
from unity_jax.data import examples
from unity_jax.data import precomputed

HEADER_ONLY = ("rgb", "modalities", "gt", "latents", "caption_embedding")
"""Record groups the latent path never decodes (captions and targets stay)."""


def latent_shape(config) -> tuple[int, int, int, int]:
  """(F', H', W', C) of one clip's latents under config.codec (StridedCodec.latent_shape)."""
  d, c = config.data, config.codec
  return (1 + (d.num_frames - 1) // c.temporal_stride, d.height // c.spatial_stride,
          d.width // c.spatial_stride, c.latent_channels)


def stored_dtype(config) -> np.dtype:
  """The numpy dtype of stored latents / embeddings (config.precompute.dtype)."""
  return np.dtype(ml_dtypes.bfloat16 if config.precompute.dtype == "bfloat16" else np.float32)


def _length_mask(length: int, size: int) -> np.ndarray:
  return np.arange(size) < int(length)


def open_for_training(config, data_dir: str, split: str) -> precomputed.PrecomputedStore:
  """The store of config.data.precomputed, checked against the config and the data.

  Raises ValueError naming the differing setting when the arrays were precomputed with another
  codec, text encoder, dtype or geometry, or from other shards (a rewritten split).
  """
  from unity_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from unity_jax.data import precompute  # pylint: disable=g-import-not-at-top
  root = config_lib.precomputed_root(config)
  store = precomputed.open_precomputed(root, split)
  sig = store.manifest["signature"]
  d = config.data
  expected = {"codec": config.codec.to_dict(), "dtype": config.precompute.dtype,
              "text_encoder": config.model.text_encoder,
              "geometry": [d.num_frames, d.height, d.width, d.caption_len, d.prompt_len]}
  if config.model.text_encoder == "precomputed":
    expected["text_dim"] = config.model.text_dim
  for key, value in expected.items():
    if sig.get(key) != value:
      raise ValueError(
          f"data.precomputed={d.precomputed!r} ({root}) was precomputed with {key} "
          f"{sig.get(key)!r}, but the config has {value!r}: re-run `unity-data precompute` "
          "with this config (into another --out), or train with the config it was made with")
  fingerprint = precompute.data_fingerprint(data_dir, split)
  if sig["data"].get(split) != fingerprint:
    raise ValueError(f"data.precomputed={d.precomputed!r} ({root}) was computed from other "
                     f"shards of split {split!r} than {data_dir} holds now (data fingerprint "
                     "differs): re-run `unity-data precompute`")
  return store


def store_positions(store: precomputed.PrecomputedStore,
                    rows: dict[str, list[dict]]) -> dict[str, np.ndarray]:
  """{source: int64 [records]}: the store clip index of record j of each source."""
  by_key = {(source, position): i for i, (_, source, position) in enumerate(store.clips)}
  out = {}
  for source, source_rows in rows.items():
    indices = []
    for row in source_rows:
      index = by_key.get((source, row["position"]))
      if index is None or store.clips[index][0] != row["id"]:
        raise ValueError(f"{store.root}: clip {row['id']!r} ({source} record {row['position']}) "
                         "is not precomputed there; re-run `unity-data precompute`")
      indices.append(index)
    out[source] = np.asarray(indices, np.int64)
  return out


def builder_factory(config, store: precomputed.PrecomputedStore, rows: dict[str, list[dict]]):
  """`build_batch_dataset(builder=...)`: LatentExampleBuilder with the store bound."""
  empty_prompt = None
  if config.model.text_encoder == "precomputed":
    empty = store.empty_text()
    empty_prompt = (np.asarray(empty["prompt_embedding"]),
                    _length_mask(empty["prompt_length"], config.data.prompt_len))
  return functools.partial(
      LatentExampleBuilder, store=store, positions=store_positions(store, rows),
      latent_shape=latent_shape(config), dtype=stored_dtype(config),
      text_dim=int(config.model.text_dim), empty_prompt=empty_prompt)


def empty_caption(config) -> dict[str, np.ndarray] | None:
  """The stored empty caption {"embedding": float32 [Lc, D], "mask": bool [Lc]} for caption
  dropout in the step (read once per run), or None when captions are token ids."""
  if not config.data.get("precomputed") or config.model.text_encoder != "precomputed":
    return None
  from unity_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  store = precomputed.open_precomputed(config_lib.precomputed_root(config), "train")
  empty = store.empty_text()
  return {"embedding": np.asarray(empty["caption_embedding"], np.float32),
          "mask": _length_mask(empty["caption_length"], config.data.caption_len)}


@dataclasses.dataclass(frozen=True, eq=False)
class LatentExampleBuilder(examples.ExampleBuilder):
  """ExampleBuilder over precomputed latents (module docstring); picklable for grain workers.

  Attributes (beyond ExampleBuilder's; `records` / `decode_fn` read header-only shard records,
  used only for builtin-encoder texts):
    store: the PrecomputedStore of the split.
    positions: {source: store clip index per record} (store_positions).
    latent_shape: (F', H', W', C); dtype: stored float dtype.
    text_dim: D of stored embeddings.
    empty_prompt: (embedding [Lm, D], mask [Lm]) of the empty prompt, or None (token ids).
  """
  store: Any = None
  positions: Any = None
  latent_shape: tuple = ()
  dtype: Any = np.float32
  text_dim: int = 0
  empty_prompt: Any = None

  def _load(self, epoch: int, record_index: int, where: str) -> dict:
    draw = self._draw(epoch, record_index)
    drawn = () if draw.modality_id == constants.NO_MODALITY else (
        constants.MODALITIES[draw.modality_id],)
    # Raises RecordError for a clip precompute skipped as bad: skip_corrupt applies as to shards.
    clip = precomputed.read_clip(self.store, self.positions[self.source][record_index], drawn)
    if self.empty_prompt is None:
      header = self.decode_fn(self.records[record_index], where)
      clip.update(caption=header.get("caption", ""),
                  segmentation_targets=header.get("segmentation_targets"))
    return clip

  def _check(self, array: Any, shape: tuple, where: str, field: str) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != tuple(shape) or array.dtype != self.dtype:
      raise ValueError(f"{where} ({self.store.root}): precomputed {field} is {array.dtype} "
                       f"{list(array.shape)}, the config expects {self.dtype} {list(shape)}")
    return array

  def _example(self, clip: dict, epoch: int, record_index: int,
               where: str) -> dict[str, np.ndarray]:
    if clip["source"] != self.source:
      raise ValueError(f"{where}: precomputed clip {clip['id']!r} is of source "
                       f"{clip['source']!r}, not {self.source!r}")
    draw = self._draw(epoch, record_index)
    latents = clip["latents"]
    rgb = self._check(latents["rgb"], self.latent_shape, where, "rgb latents")
    if draw.modality_id == constants.NO_MODALITY:
      modality_name = "none"
      # The absent stream is key-masked in attention and has loss weight 0, so its values
      # never reach the loss; the shard path encodes a black video there (see the fingerprint
      # test in tests/test_train_precomputed.py for the equality of both paths).
      modality = np.zeros(self.latent_shape, self.dtype)
    else:
      modality_name = constants.MODALITIES[draw.modality_id]
      modality = self._check(latents[modality_name], self.latent_shape, where,
                             f"{modality_name} latents")
    out = {"rgb_latents": rgb, "modality_latents": modality,
           "modality_id": np.int32(draw.modality_id),
           "source_id": np.int32(constants.source_id(self.source)),
           "task_id": np.int32(draw.task_id)}
    if self.empty_prompt is None:
      out.update(examples.token_fields(clip, str(clip["caption"]), modality_name, self.options))
      return out
    o = self.options
    caption = self._check(clip["caption_embedding"], (o.caption_len, self.text_dim), where,
                          "caption embedding")
    if modality_name == "none":
      prompt, prompt_mask = self.empty_prompt
    else:
      prompt = self._check(clip["prompt_embedding"][draw.modality_id],
                           (o.prompt_len, self.text_dim), where, "prompt embedding")
      prompt_mask = _length_mask(clip["prompt_length"][draw.modality_id], o.prompt_len)
    out.update(caption_embedding=caption,
               caption_mask=_length_mask(clip["caption_length"], o.caption_len),
               modality_prompt_embedding=np.asarray(prompt, self.dtype),
               modality_prompt_mask=prompt_mask,
               # Texts were cut to caption_len / prompt_len when precomputed, not here.
               **{examples.TRUNCATED_KEY: np.zeros(2, np.int32)})
    return out
