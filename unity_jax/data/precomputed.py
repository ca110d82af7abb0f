"""Reading precomputed latents and text embeddings (written by `unity-data precompute`).

  store = open_precomputed("data/openuni/precomputed", "train")   # or "gs://bucket/pre", ...
  clip = read_clip(store, 7)        # clip 7 of OpenUniReader.index("train") order
  clip["latents"]["rgb"]            # float32|bfloat16 [F', H', W', C]
  store.index_of(clip_id)           # clip id -> index

The layout is described in precompute.py and docs/openuni_format.md section 11. This module
imports no jax: it is what input-pipeline workers use. Every clip is one zarr v3 chunk per
array, so `read_clip` issues all its reads at once and waits once (≈1 ms per clip locally).
"""

import json
import os
from typing import Any

import numpy as np
import tensorstore as ts

from unity_jax import constants
from unity_jax.data.schema import RecordError

MANIFEST_NAME = "precompute.json"
STREAMS = ("rgb",) + constants.MODALITIES
PENDING, WRITTEN, BAD = 0, 1, 2
"""Values of the per-clip `done` array."""


def is_url(path: str) -> bool:
  return "://" in path


def kvstore(root: str, *parts: str) -> Any:
  """A tensorstore kvstore spec for `root/parts` (local path, or a URL such as gs://b/p)."""
  if is_url(root):
    return "/".join([root.rstrip("/"), *parts]) + "/"
  return {"driver": "file", "path": os.path.join(os.path.abspath(root), *parts)}


def get_bytes(root: str, key: str) -> bytes | None:
  """The bytes of file `key` under `root`, or None when it does not exist."""
  if is_url(root):
    result = ts.KvStore.open(kvstore(root)).result().read(key).result()
    return bytes(result.value) if result.state == "value" else None
  path = os.path.join(root, key)
  if not os.path.exists(path):
    return None
  with open(path, "rb") as f:
    return f.read()


def open_array(root: str, name: str) -> ts.TensorStore:
  return ts.open({"driver": "zarr3", "kvstore": kvstore(root, name)}, open=True,
                 read=True).result()


class PrecomputedStore:
  """The arrays of one split of a finished precompute (its manifest must exist).

  Picklable: arrays open lazily in each process that reads.
  """

  def __init__(self, root: str, split: str):
    raw = get_bytes(root, MANIFEST_NAME)
    if raw is None:
      raise RecordError(f"{root}: no {MANIFEST_NAME}; the precompute did not finish (re-run "
                        "`unity-data precompute` with the same arguments to resume it)")
    self.root, self.split, self.manifest = root, split, json.loads(raw)
    if split not in self.manifest["splits"]:
      raise KeyError(f"split {split!r} not precomputed in {root}; available: "
                     f"{sorted(self.manifest['splits'])}")
    self.entry = self.manifest["splits"][split]
    self.clips = self.entry["clips"]  # [id, source, position] per clip index.
    self._ids = {clip_id: i for i, (clip_id, _, _) in enumerate(self.clips)}
    self._arrays: dict[str, ts.TensorStore] = {}
    self._done: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.clips)

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_arrays": {}, "_done": None}

  @property
  def has_text(self) -> bool:
    return "caption_embedding" in self.entry["arrays"]

  def array(self, name: str) -> ts.TensorStore:
    if name not in self._arrays:
      self._arrays[name] = open_array(self.root, f"{self.split}/{name}")
    return self._arrays[name]

  def done(self) -> np.ndarray:
    """uint8 [N]: WRITTEN, or BAD for clips skipped by --skip-bad (they have no arrays)."""
    if self._done is None:
      self._done = self.array("done").read().result()
    return self._done

  def index_of(self, clip_id: str) -> int:
    return self._ids[clip_id]

  def empty_text(self) -> dict[str, np.ndarray]:
    """The empty text's embeddings: caption [Lc, D], prompt [Lm, D] (+ their lengths)."""
    out = {}
    for name in ("caption", "prompt"):
      out[f"{name}_embedding"] = open_array(self.root, f"empty/{name}_embedding").read().result()[0]
      out[f"{name}_length"] = self.manifest["empty_text"][f"{name}_length"]
    return out


def read_clip(store: PrecomputedStore, index: int,
              available: tuple[str, ...] | None = None) -> dict[str, Any]:
  """Arrays of clip `index` (OpenUniReader.index order of the store's split).

  Returns {"id", "source", "position",
           "latents": {stream: [F', H', W', C]} for rgb and the available modalities,
           and with precomputed text: "caption_embedding" [Lc, D], "caption_length" int,
           "prompt_embedding" [M, Lm, D] (M = constants.MODALITIES order), "prompt_length"
           int32 [M]}. `available` (modality names) defaults to the streams that have a chunk,
  found from the NaN fill of the missing ones; pass the index row's to save that check.
  Raises RecordError for a clip that --skip-bad skipped.
  """
  index = int(index)
  if not 0 <= index < len(store):
    raise IndexError(f"{store.root} {store.split}: clip {index} out of range [0, {len(store)})")
  clip_id, source, position = store.clips[index]
  if store.done()[index] != WRITTEN:
    raise RecordError(f"{store.root} {store.split} clip {index} (id {clip_id!r}) has no "
                      "precomputed arrays (skipped as bad, see precompute.json)")
  streams = STREAMS if available is None else ("rgb", *available)
  names = [f"latents/{s}" for s in streams]
  if store.has_text:
    names += ["caption_embedding", "caption_length", "prompt_embedding", "prompt_length"]
  futures = {name: store.array(name)[index].read() for name in names}
  values = {name: future.result() for name, future in futures.items()}
  latents = {s: values[f"latents/{s}"] for s in streams}
  if available is None:  # Missing chunks read as the NaN fill value.
    latents = {s: v for s, v in latents.items() if s == "rgb" or not np.isnan(v.flat[0])}
  out = {"id": clip_id, "source": source, "position": position, "latents": latents}
  if store.has_text:
    out.update(caption_embedding=values["caption_embedding"],
               caption_length=int(values["caption_length"]),
               prompt_embedding=values["prompt_embedding"],
               prompt_length=values["prompt_length"])
  return out


def open_precomputed(root: str, split: str) -> PrecomputedStore:
  """The store of `split` under `root` (a directory or a URL tensorstore understands)."""
  return PrecomputedStore(root, split)
