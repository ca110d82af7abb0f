"""Reading diffusers-layout checkpoints one tensor (or one slice of a tensor) at a time.

A checkpoint directory holds `config.json` and either one `*.safetensors` file or several with
a `*.safetensors.index.json` ({"weight_map": {tensor name: file name}}). The safetensors format
is an 8-byte little-endian header length, a JSON header {name: {"dtype", "shape",
"data_offsets": [begin, end]}} and the raw little-endian bytes. Files are memory-mapped, so
reading a tensor, or a slice of one, touches only those bytes: a 14B import never holds more
than one tensor on the host, and each device's shard can read just its own slice
(`read(name, index)`). bfloat16 tensors are read through `ml_dtypes`, without torch.
"""

import glob
import json
import os
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class CheckpointError(ValueError):
  """A checkpoint directory is missing, malformed, or does not match what was expected."""


def read_header(path: str) -> tuple[dict, int]:
  """({name: {"dtype", "shape", "data_offsets"}}, byte offset of the data) of one file."""
  with open(path, "rb") as f:
    prefix = f.read(8)
    if len(prefix) != 8:
      raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header "
                            "length)")
    (length,) = struct.unpack("<Q", prefix)
    if length > os.path.getsize(path) - 8:
      raise CheckpointError(f"{path}: header length {length} exceeds the file size")
    header = json.loads(f.read(length))
  header.pop("__metadata__", None)
  return header, 8 + length


class SafetensorsCheckpoint:
  """A diffusers-layout directory: `config`, `keys()`, `shape(name)`, `read(name[, index])`."""

  def __init__(self, directory: str, exclude: tuple[str, ...] = (), files=None):
    """`exclude`: file names the glob of an index-less directory skips (e.g. a side file of
    other tensors); `files`: read exactly these files of `directory` (no index, no glob)."""
    self.directory = directory
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
      raise CheckpointError(f"{directory}: no config.json (expected a diffusers model directory "
                            "as written by save_pretrained)")
    with open(config_path) as f:
      self.config = json.load(f)
    indexes = [] if files else glob.glob(os.path.join(directory, "*.safetensors.index.json"))
    if len(indexes) > 1:
      raise CheckpointError(f"{directory}: several index files {sorted(indexes)}")
    if indexes:
      with open(indexes[0]) as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    elif files:
      files = sorted(files)
    else:
      files = sorted(os.path.basename(p)
                     for p in glob.glob(os.path.join(directory, "*.safetensors"))
                     if os.path.basename(p) not in exclude)
      if not files:
        raise CheckpointError(f"{directory}: no *.safetensors file and no "
                              "*.safetensors.index.json")
    self._entries = {}   # name -> (path, dtype, shape, begin, end)
    for name in files:
      path = os.path.join(directory, name)
      if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: the index names {name!r}, which does not exist")
      header, data_start = read_header(path)
      for key, info in header.items():
        if info["dtype"] not in DTYPES:
          raise CheckpointError(f"{path}: tensor {key!r} has dtype {info['dtype']!r}; "
                                f"expected one of {sorted(DTYPES)}")
        begin, end = info["data_offsets"]
        self._entries[key] = (path, info["dtype"], tuple(info["shape"]), data_start + begin,
                              data_start + end)

  def keys(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def shape(self, name: str) -> tuple[int, ...]:
    return self._entry(name)[2]

  def dtype(self, name: str) -> str:
    """The stored dtype name ("BF16", "F32", ...)."""
    return self._entry(name)[1]

  def read(self, name: str, index=None) -> np.ndarray:
    """The tensor `name` (or `tensor[index]`) as a numpy array in its stored dtype.

    Only the bytes of the requested slice are read from the memory-mapped file. The mapping is
    dropped after each read: mapped file pages count in the process's resident size, so a
    cached mapping would make an import's peak RSS grow to the checkpoint's size.
    """
    path, dtype, shape, begin, end = self._entry(name)
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=begin, shape=(end - begin,))
    array = raw.view(DTYPES[dtype]).reshape(shape)
    out = np.array(array if index is None else array[index])
    del array, raw   # unmaps now (the copy above holds no reference to the mapping)
    return out

  def _entry(self, name):
    if name not in self._entries:
      raise CheckpointError(f"{self.directory}: no tensor named {name!r}")
    return self._entries[name]


def dtype_name(dtype) -> str:
  """The safetensors name ("BF16", "F32", ...) of a numpy dtype."""
  names = {np.dtype(v): k for k, v in DTYPES.items()}
  if np.dtype(dtype) not in names:
    raise CheckpointError(f"dtype {np.dtype(dtype)} cannot be stored in safetensors")
  return names[np.dtype(dtype)]


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata=None) -> None:
  """Writes `tensors` as one safetensors file, atomically (temp file + rename).

  Arrays are written one at a time in sorted name order; bfloat16 arrays are stored as BF16.
  """
  specs = {key: (dtype_name(array.dtype), array.shape) for key, array in tensors.items()}
  write_safetensors_streaming(path, specs, tensors.__getitem__, metadata)


def write_safetensors_streaming(path: str, specs: dict, produce, metadata=None) -> None:
  """Writes one safetensors file whose tensors are produced one at a time, atomically.

  The header needs only shapes and dtypes, so a caller that knows them can hand over each
  tensor when it is written and hold at most one on the host.
  Args:
    specs: {name: (dtype name "BF16"|"F32"|..., shape)}.
    produce: name -> numpy array of that shape (cast to the dtype here).
  """
  header, offset = {}, 0
  for key in sorted(specs):
    dtype, shape = specs[key]
    if dtype not in DTYPES:
      raise CheckpointError(f"cannot store {key!r} as {dtype!r}; expected one of {sorted(DTYPES)}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
    header[key] = {"dtype": dtype, "shape": [int(n) for n in shape],
                   "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for key in sorted(specs):
      dtype, shape = specs[key]
      array = np.asarray(produce(key))
      if tuple(array.shape) != tuple(shape):
        raise CheckpointError(f"{path}: tensor {key!r} has shape {tuple(array.shape)}, the "
                              f"header says {tuple(shape)}")
      f.write(np.ascontiguousarray(array.astype(DTYPES[dtype], copy=False)).tobytes())
  os.replace(tmp, path)
