"""Writes clips as OpenUni v1 shards: one ArrayRecord shard series per source, manifest last.

Layout (the contract readers depend on):
  {data_dir}/{split}/{source}-{i:05d}-of-{n:05d}.array_record
  {data_dir}/manifest.json

Crash safety. Records stream into `{split}/.staging/{source}-{k:05d}.array_record.tmp`; a full
shard is closed, hashed and renamed to `.staging/{source}-{k:05d}.array_record`, then a JSON
sidecar (keys, index rows, sha256) is written next to it, also by temp file + rename. A staged
shard therefore exists only when complete. `finalize()` moves staged shards to their final names
(the sidecar records the move first), writes the manifest by temp file + rename, and only then
removes stale shards and the staging directory. If anything fails, the previous manifest and
every complete staged shard survive, and a re-run with `resume=True` and the same `signature`
skips the keys already staged (callers such as `unity-data synth` skip generating them too).
A re-run after a completed run rewrites the split. One writer per split at a time (file lock).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from typing import Any, Iterable, Mapping

from array_record.python import array_record_module

from unity_jax import constants
from unity_jax.data import record as record_lib
from unity_jax.data import schema
from unity_jax.io_utils import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
STAGING_DIR = ".staging"
ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"  # One record per chunk: O(1) random access.
DEFAULT_CLIPS_PER_SHARD = 64
LAYOUT = {"shard_layout": "{split}/{source}-{i:05d}-of-{n:05d}.array_record",
          "record_format": "docs/openuni_format.md (OpenUni v1 record bytes, one clip each)"}


def shard_name(source: str, index: int, count: int) -> str:
  """The final file name of shard `index` of `count` for one source."""
  return f"{source}-{index:05d}-of-{count:05d}.array_record"


def atomic_write_json(path: str, value: Any) -> None:
  atomic_write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode("utf-8"))


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: str, blocking: bool, busy_message: str):
  with open(path, "a") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      raise RuntimeError(busy_message) from None
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def read_manifest(data_dir: str) -> dict:
  """Returns the manifest of `data_dir`, or an empty v1 manifest when there is none yet."""
  path = os.path.join(data_dir, MANIFEST_NAME)
  if not os.path.exists(path):
    return {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION, "splits": {}}
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("schema_version") != schema.SCHEMA_VERSION:
    raise schema.RecordError(f"{path}: schema version {manifest.get('schema_version')!r}, this "
                             f"code reads and writes version {schema.SCHEMA_VERSION}")
  return manifest


def _count(counter: dict[str, int], key: str, increment: int = 1) -> None:
  counter[key] = counter.get(key, 0) + increment


class _OpenShard:
  """A staged shard being written: temp file, ArrayRecord writer, keys and index rows so far."""

  def __init__(self, path: str, source: str, number: int):
    self.path, self.source, self.number = path, source, number
    self.writer = array_record_module.ArrayRecordWriter(f"{path}.tmp", ARRAY_RECORD_OPTIONS)
    self.keys: list[str] = []
    self.rows: list[list] = []
    self.arrays: dict[str, dict] = {}


class SplitWriter:
  """Streams clips (or encoded records) of one split into per-source shards.

  Use as a context manager: a clean exit finalizes (final names + manifest); an exception
  aborts, keeping complete staged shards for a resumed run.
  """

  def __init__(self, data_dir: str, split: str, clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD,
               resume: bool = True, signature: Any = None,
               video_codec: str = record_lib.DEFAULT_VIDEO_CODEC):
    if clips_per_shard < 1:
      raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
    if not split or not split.replace("_", "").replace("-", "").isalnum():
      raise ValueError(f"split must be a non-empty name of letters, digits, '-' or '_', "
                       f"got {split!r}")
    self.data_dir, self.split = data_dir, split
    self.clips_per_shard, self.video_codec = clips_per_shard, video_codec
    self.split_dir = os.path.join(data_dir, split)
    self.staging = os.path.join(self.split_dir, STAGING_DIR)
    os.makedirs(self.staging, exist_ok=True)
    self._lock = _file_lock(os.path.join(self.split_dir, ".lock"), blocking=False,
                            busy_message=f"another writer holds {self.split_dir}/.lock")
    self._lock.__enter__()
    self._open: dict[str, _OpenShard] = {}
    self._staged: dict[tuple[str, int], dict] = {}  # (source, number) -> sidecar.
    self._ids: set[str] = set()
    self._done = False
    try:
      self._prepare_staging(resume, {"signature": signature, "clips_per_shard": clips_per_shard,
                                     "schema_version": schema.SCHEMA_VERSION})
    except BaseException:
      self._release()
      raise
    self._skip_keys = self.completed_keys
    self.entry: dict | None = None  # The split's manifest entry, once finalized.

  # Resume -------------------------------------------------------------------------------------

  def _prepare_staging(self, resume: bool, signature: dict) -> None:
    signature_path = os.path.join(self.staging, "signature.json")
    previous = None
    if os.path.exists(signature_path):
      with contextlib.suppress(ValueError, OSError), open(signature_path) as f:
        previous = json.load(f)
    if not resume or previous != json.loads(json.dumps(signature)):
      self._clear_staging()
      atomic_write_json(signature_path, signature)
    for name in sorted(os.listdir(self.staging)):
      path = os.path.join(self.staging, name)
      if ".tmp" in name:
        os.remove(path)  # Left by a crash mid-shard: never complete, never referenced.
      elif name.endswith(".json") and name != "signature.json":
        sidecar = self._load_sidecar(path)
        if sidecar is None:
          os.remove(path)
        else:
          self._staged[(sidecar["source"], sidecar["number"])] = sidecar
          self._ids.update(row[0] for row in sidecar["records"])

  def _clear_staging(self) -> None:
    for name in os.listdir(self.staging):
      path = os.path.join(self.staging, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

  def _load_sidecar(self, path: str) -> dict | None:
    """Returns a staged shard's sidecar if its shard file is intact where the sidecar says."""
    try:
      with open(path) as f:
        sidecar = json.load(f)
      staged = os.path.join(self.staging, sidecar["staged_name"])
      if os.path.exists(staged) and os.path.getsize(staged) == sidecar["bytes"]:
        return sidecar
      final = sidecar.get("final") and os.path.join(self.split_dir, sidecar["final"])
      if final and os.path.exists(final) and os.path.getsize(final) == sidecar["bytes"] and (
          file_sha256(final) == sidecar["sha256"]):
        return sidecar
    except (OSError, ValueError, KeyError, TypeError):
      pass
    return None

  @property
  def completed_keys(self) -> set[str]:
    """Keys of records already in complete staged shards (a resumed run skips them)."""
    return {key for sidecar in self._staged.values() for key in sidecar["keys"]}

  # Writing ------------------------------------------------------------------------------------

  def add(self, clip: Mapping[str, Any], key: str | None = None) -> bool:
    """Validates, encodes and appends a clip; returns False if `key` (default: id) is staged."""
    key = clip.get("id") if key is None else key
    if key in self._skip_keys:
      return False
    return self.add_record(record_lib.encode_record(clip, self.video_codec), key)

  def add_record(self, data: bytes, key: str | None = None) -> bool:
    """Appends encoded record bytes (e.g. made in a worker process); False if `key` is staged."""
    info = record_lib.peek_metadata(data, where=f"record for split {self.split!r}")
    key = info["id"] if key is None else key
    if key in self._skip_keys:
      return False
    if info["id"] in self._ids:
      raise ValueError(f"duplicate clip id {info['id']!r} in split {self.split!r}")
    self._ids.add(info["id"])
    shard = self._open.get(info["source"]) or self._open_shard(info["source"])
    shard.writer.write(data)
    shard.keys.append(key)
    shard.rows.append(schema.index_row(info))
    for spec in info["arrays"]:
      stats = shard.arrays.setdefault(spec["name"], {"dtype": spec["dtype"], "codecs": {},
                                                     "shapes": {}})
      _count(stats["codecs"], spec["codec"])
      _count(stats["shapes"], "x".join(map(str, spec["shape"])))
    if len(shard.keys) >= self.clips_per_shard:
      self._close_shard(shard)
    return True

  def _open_shard(self, source: str) -> _OpenShard:
    numbers = [n for s, n in self._staged if s == source]
    number = max(numbers, default=-1) + 1
    path = os.path.join(self.staging, f"{source}-{number:05d}.array_record")
    shard = _OpenShard(path, source, number)
    self._open[source] = shard
    return shard

  def _close_shard(self, shard: _OpenShard) -> None:
    shard.writer.close()
    os.replace(f"{shard.path}.tmp", shard.path)
    sidecar = {"source": shard.source, "number": shard.number,
               "staged_name": os.path.basename(shard.path), "final": None,
               "num_records": len(shard.keys), "bytes": os.path.getsize(shard.path),
               "sha256": file_sha256(shard.path), "keys": shard.keys, "records": shard.rows,
               "arrays": shard.arrays}
    atomic_write_json(self._sidecar_path(sidecar), sidecar)
    self._staged[(shard.source, shard.number)] = sidecar
    del self._open[shard.source]

  # Finishing ----------------------------------------------------------------------------------

  def abort(self) -> None:
    """Drops the shards in progress; complete staged shards stay for a resumed run."""
    for shard in list(self._open.values()):
      with contextlib.suppress(Exception):
        shard.writer.close()
      with contextlib.suppress(OSError):
        os.remove(f"{shard.path}.tmp")
    self._open.clear()
    self._release()

  def _release(self) -> None:
    if not self._done:
      self._done = True
      self._lock.__exit__(None, None, None)

  def finalize(self) -> dict:
    """Closes open shards, moves every shard to its final name, writes the manifest last.

    Returns the split's manifest entry.
    """
    if self.entry is not None:
      return self.entry  # Already finalized (e.g. explicitly inside a `with` block).
    if self._done:
      raise RuntimeError(f"writer of split {self.split!r} was aborted; start a new one to resume")
    for shard in list(self._open.values()):
      self._close_shard(shard)
    plan = self._final_names()
    # Shards moved by an interrupted finalize but now due elsewhere go back to staging first,
    # so no move below can overwrite a shard of this split.
    for key, target in plan.items():
      sidecar = self._staged[key]
      if sidecar["final"] and sidecar["final"] != target and not self._is_staged(sidecar):
        os.replace(os.path.join(self.split_dir, sidecar["final"]),
                   os.path.join(self.staging, sidecar["staged_name"]))
    for key, target in plan.items():
      sidecar = self._staged[key]
      if self._is_staged(sidecar):
        sidecar["final"] = target  # Record the intent before moving (see _load_sidecar).
        atomic_write_json(self._sidecar_path(sidecar), sidecar)
        os.replace(os.path.join(self.staging, sidecar["staged_name"]),
                   os.path.join(self.split_dir, target))
    entry = self._split_entry(plan)
    with _file_lock(os.path.join(self.data_dir, ".manifest.lock"), blocking=True, busy_message=""):
      manifest = read_manifest(self.data_dir)
      manifest["splits"][self.split] = entry
      manifest.update(LAYOUT)
      manifest["splits"] = dict(sorted(manifest["splits"].items()))
      atomic_write_json(os.path.join(self.data_dir, MANIFEST_NAME), manifest)
    keep = set(plan.values())
    for name in os.listdir(self.split_dir):
      if name.endswith(".array_record") and name not in keep:
        os.remove(os.path.join(self.split_dir, name))  # Shards of a previous, replaced run.
    shutil.rmtree(self.staging)
    self._release()
    self.entry = entry
    return entry

  def _sidecar_path(self, sidecar: dict) -> str:
    return os.path.join(self.staging, f"{sidecar['source']}-{sidecar['number']:05d}.json")

  def _is_staged(self, sidecar: dict) -> bool:
    return os.path.exists(os.path.join(self.staging, sidecar["staged_name"]))

  def _final_names(self) -> dict[tuple[str, int], str]:
    plan = {}
    for source in constants.SOURCES:
      numbers = sorted(n for s, n in self._staged if s == source)
      for rank, number in enumerate(numbers):
        plan[(source, number)] = shard_name(source, rank, len(numbers))
    return plan

  def _split_entry(self, plan: Mapping[tuple[str, int], str]) -> dict:
    shards, arrays = [], {}
    counts = {"source": {s: 0 for s in constants.SOURCES},
              "modality": {m: 0 for m in constants.MODALITIES}, "person_count": {}}
    for key, target in plan.items():
      sidecar = self._staged[key]
      shards.append({"file": f"{self.split}/{target}", "source": sidecar["source"],
                     "num_records": sidecar["num_records"], "bytes": sidecar["bytes"],
                     "sha256": sidecar["sha256"], "records": sidecar["records"]})
      counts["source"][sidecar["source"]] += sidecar["num_records"]
      for _, person_count, mask in sidecar["records"]:
        for name in schema.available_names(mask):
          counts["modality"][name] += 1
        _count(counts["person_count"], str(person_count))
      for name, stats in sidecar["arrays"].items():
        merged = arrays.setdefault(name, {"dtype": stats["dtype"], "codecs": {}, "shapes": {}})
        for field in ("codecs", "shapes"):
          for key, count in stats[field].items():
            _count(merged[field], key, count)
    return {"num_records": sum(counts["source"].values()), "counts": counts,
            "arrays": dict(sorted(arrays.items())), "index_columns": list(schema.INDEX_COLUMNS),
            "shards": shards}

  def __enter__(self) -> "SplitWriter":
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    if exc_type is not None:
      self.abort()
      return
    try:
      self.finalize()
    except BaseException:
      self.abort()  # Releases the lock; complete staged shards stay for a resumed run.
      raise


def write_clips(clips: Iterable[Mapping[str, Any]], data_dir: str, split: str,
                clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD, resume: bool = True,
                signature: Any = None, video_codec: str = record_lib.DEFAULT_VIDEO_CODEC) -> dict:
  """Writes clip dicts (schema.py) as the OpenUni split `split` of `data_dir`.

  Shards are per source, `clips_per_shard` records each (the last one per source may be
  smaller). Writing is atomic per shard and the manifest is written last; after an error, a
  re-run with the same `signature` resumes, skipping clips whose id is already staged.

  Returns:
    The split's manifest entry (counts, array shapes and codecs, shards with sha256 and index).
  """
  with SplitWriter(data_dir, split, clips_per_shard, resume, signature, video_codec) as writer:
    for clip in clips:
      writer.add(clip)
  return writer.entry
