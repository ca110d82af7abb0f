"""Reads OpenUni v1 data directories: manifest, per-record index, random-access sources.

  reader = OpenUniReader("data/openuni")
  reader.splits                                  # ("eval", "train")
  rows = reader.index("train", "two_person")     # filter without decoding anything
  clips = reader.source("train", "two_person")   # len(), clips[i] -> clip dict (schema.py)

For grain, keep decoding in the map workers:
  raw = reader.source("train", "general", decode=False)     # raw[i] -> record bytes
  dataset = grain.MapDataset.source(raw).map_with_index(raw.decode)
`decode_record(bytes, where=...)` is the same decoder as a plain function.
"""

import bisect
import functools
import os
import threading
from typing import Any, Iterable, Sequence

from array_record.python import array_record_module

from unity_jax import constants
from unity_jax.data import record as record_lib
from unity_jax.data import schema
from unity_jax.data import writer as writer_lib
from unity_jax.data.record import decode_record, peek_metadata  # noqa: F401  (public API)
from unity_jax.data.schema import RecordError  # noqa: F401  (public API)


def shard_path(data_dir: str, file: Any, where: str) -> str:
  """The real path of a manifest shard `file` entry; RecordError unless it lies inside data_dir.

  A manifest is data, not code: an absolute path, a `..` component or a symlink leading out of
  the data directory would let it make the reader open (and fail on, or time) any file.
  """
  root = os.path.realpath(data_dir)
  parts = file.replace("\\", "/").split("/") if isinstance(file, str) else []
  if not parts or not file or os.path.isabs(file) or ".." in parts:
    raise RecordError(f"{where}: file {file!r} must be a relative path inside the data "
                      f"directory {root} (no absolute path, no '..')")
  path = os.path.realpath(os.path.join(root, file))
  if os.path.commonpath([root, path]) != root:
    raise RecordError(f"{where}: file {file!r} resolves to {path}, outside the data directory "
                      f"{root} (a symlink out of it?); shards must lie inside the data directory")
  return path


class OpenUniSource:
  """The records of one (split, source), in manifest order; a grain RandomAccessDataSource.

  `source[i]` returns the decoded clip dict, or the record bytes when `decode=False`. Readers
  open lazily and are dropped when pickled, so instances can be sent to worker processes.
  """

  def __init__(self, data_dir: str, split: str, source: str, shards: Sequence[dict],
               decode: bool = True, skip: Iterable[str] = (),
               geometry: record_lib.Geometry | None = None):
    self.data_dir, self.split, self.source_name = data_dir, split, source
    self.shards = [dict(file=s["file"], num_records=s["num_records"], bytes=s["bytes"],
                        path=shard_path(data_dir, s["file"], f"{split}/{source} shard {i}"))
                   for i, s in enumerate(shards)]
    self.geometry = geometry
    self.decode_records, self.skip = decode, tuple(skip)
    self._starts = [0]
    for shard in self.shards:
      self._starts.append(self._starts[-1] + shard["num_records"])
    self._readers: dict[int, Any] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self._starts[-1]

  def __repr__(self) -> str:
    return (f"OpenUniSource(data_dir={self.data_dir!r}, split={self.split!r}, "
            f"source={self.source_name!r}, records={len(self)}, decode={self.decode_records})")

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    state["_readers"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def locate(self, index: int) -> tuple[int, int]:
    """Returns (shard number, record number in that shard) of source position `index`."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"{self.split}/{self.source_name}: index {index} out of range "
                       f"[0, {len(self)})")
    shard = bisect.bisect_right(self._starts, index) - 1
    return shard, index - self._starts[shard]

  def where(self, index: int) -> str:
    """A human-readable location for error messages: "<shard file> record <n>"."""
    shard, position = self.locate(index)
    return f"{os.path.join(self.data_dir, self.shards[shard]['file'])} record {position}"

  def _reader(self, shard: int):
    with self._lock:
      if shard not in self._readers:
        info = self.shards[shard]
        path = info["path"]
        size = os.path.getsize(path) if os.path.exists(path) else None
        if size != info["bytes"]:
          raise RecordError(f"{path}: shard is {size} bytes (None = missing), the manifest says "
                            f"{info['bytes']}; the directory is incomplete or was modified")
        try:
          reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0",
                                                         file_reader_buffer_size=32768)
        except RuntimeError as error:
          raise RecordError(f"{path}: cannot open shard ({error})") from None
        if reader.num_records() != info["num_records"]:
          raise RecordError(f"{path}: shard holds {reader.num_records()} records, the manifest "
                            f"says {info['num_records']}")
        self._readers[shard] = reader
      return self._readers[shard]

  def raw(self, index: int) -> bytes:
    """The record bytes at source position `index` (no decoding)."""
    shard, position = self.locate(index)
    try:
      return self._reader(shard).read([position])[0]
    except RuntimeError as error:
      raise RecordError(f"{self.where(index)}: cannot read record ({error})") from None

  def decode(self, index: int, data: bytes) -> dict[str, Any]:
    """Decodes record bytes read from position `index` (signature fits `map_with_index`)."""
    try:
      where = self.where(index)
    except IndexError:  # Called with a position that is not this source's (e.g. after a mix).
      where = f"{self.split}/{self.source_name} element {index}"
    return decode_record(data, where=where, skip=self.skip, geometry=self.geometry)

  def __getitem__(self, index: int) -> Any:
    data = self.raw(index)
    return self.decode(index, data) if self.decode_records else data

  def __getitems__(self, indices: Sequence[int]) -> list[Any]:
    return [self[i] for i in indices]


class OpenUniReader:
  """An OpenUni v1 data directory: `{data_dir}/manifest.json` plus per-source shards."""

  def __init__(self, data_dir: str):
    self.data_dir = os.fspath(data_dir)
    path = os.path.join(self.data_dir, writer_lib.MANIFEST_NAME)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: not an OpenUni data directory (write one "
                              f"with `unity-data synth --out {self.data_dir}`)")
    try:
      self.manifest = writer_lib.read_manifest(self.data_dir)
    except ValueError as error:  # Bad JSON, or a RecordError for the wrong schema version.
      raise RecordError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(self.manifest.get("splits"), dict):
      raise RecordError(f"{path}: manifest has no 'splits' object")
    # Checked up front, before anything is opened: every shard file stays inside the directory.
    for split, entry in self.manifest["splits"].items():
      for i, shard in enumerate(entry.get("shards", ()) if isinstance(entry, dict) else ()):
        shard_path(self.data_dir, shard.get("file") if isinstance(shard, dict) else None,
                   f"{path}: splits.{split}.shards[{i}]")

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.manifest["splits"])

  def split_entry(self, split: str) -> dict:
    """The manifest entry of `split` (counts, array shapes/codecs, shards with index rows)."""
    if split not in self.manifest["splits"]:
      raise KeyError(f"split {split!r} not in {self.data_dir}; available: {list(self.splits)}")
    return self.manifest["splits"][split]

  def sources(self, split: str) -> tuple[str, ...]:
    """Sources that have at least one record in `split`, in constants.SOURCES order."""
    counts = self.split_entry(split)["counts"]["source"]
    return tuple(s for s in constants.SOURCES if counts.get(s, 0) > 0)

  def _shards(self, split: str, source: str) -> list[dict]:
    constants.source_id(source)  # Clear error for unknown names.
    return [s for s in self.split_entry(split)["shards"] if s["source"] == source]

  def source(self, split: str, source: str, decode: bool = True,
             skip: Iterable[str] = ()) -> OpenUniSource:
    """Random access to one source's records of `split` (empty if it has none).

    Args:
      decode: False returns record bytes; decode them with `.decode(index, data)`.
      skip: groups not to decode (see record.decode_record), e.g. ("gt",) for training.
    """
    return OpenUniSource(self.data_dir, split, source, self._shards(split, source), decode, skip,
                         geometry=self.geometry(split))

  def geometry(self, split: str) -> record_lib.Geometry | None:
    """The split's declared array dtypes and shapes (None for a manifest without "arrays")."""
    arrays = self.split_entry(split).get("arrays")
    if arrays is None:
      return None
    return record_lib.declared_geometry(arrays, f"{self.data_dir}: splits.{split}.arrays")

  def decode_fn(self, split: str, skip: Iterable[str] = ()):
    """decode_record(raw, where) bound to `skip` and the split's geometry (picklable)."""
    return functools.partial(decode_record, skip=tuple(skip), geometry=self.geometry(split))

  def index(self, split: str, source: str | None = None) -> list[dict]:
    """Per-record rows, ordered by source then position: no record is read.

    Each row: {"id", "source", "person_count", "available": tuple of modality names,
    "position": index into `self.source(split, row["source"])`, "file", "record"}.
    """
    rows = []
    for name in (self.sources(split) if source is None else (source,)):
      position = 0
      for shard in self._shards(split, name):
        for number, (clip_id, person_count, mask) in enumerate(shard["records"]):
          rows.append({"id": clip_id, "source": name, "person_count": person_count,
                       "available": schema.available_names(mask), "position": position,
                       "file": shard["file"], "record": number})
          position += 1
    return rows

  def verify(self, split: str | None = None) -> None:
    """Checks every shard's size and sha256 against the manifest (reads all bytes)."""
    for name in ([split] if split else self.splits):
      for shard in self.split_entry(name)["shards"]:
        path = shard_path(self.data_dir, shard["file"], f"splits.{name}.shards")
        if not os.path.exists(path):
          raise RecordError(f"{path}: shard listed in the manifest is missing")
        if writer_lib.file_sha256(path) != shard["sha256"]:
          raise RecordError(f"{path}: sha256 differs from the manifest (corrupt or replaced)")
