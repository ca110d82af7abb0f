"""OpenUni v1 record bytes: one self-contained, checksummed record per clip.

Layout (little-endian), see docs/openuni_format.md:

  offset 0   4 bytes  magic b"OUNI"
  offset 4   u16      schema version (1)
  offset 6   u16      flags (0 in v1)
  offset 8   u32      header length N
  offset 12  u32      header CRC-32: of bytes [0, 12) followed by the N header bytes
  offset 16  N bytes  header: UTF-8 JSON {"meta": {...}, "arrays": [{name, dtype, shape, codec,
                      offset, length, crc32}, ...]}
  16 + N     payload: the arrays' encoded bytes, back to back in header order (each array's
                      "crc32" is the CRC-32 of its encoded bytes)

Every array is encoded on its own ("raw", "zlib" level 6, or "png" for uint8 videos), so a record
decodes without any other record and a reader can skip groups it does not need (e.g. "gt").
The writer's default policy "auto" stores zlib, or raw where zlib saves less than 20% (camera
footage after H.264 decoding): inflating incompressible bytes costs ~10x a copy for ~1.2x size.
Checksums: the header CRC covers the prefix and header; each array's CRC covers its bytes, and
the arrays must tile the payload exactly. Every byte that decoding uses is therefore checked:
any bit flip or truncation is a RecordError, never garbage. An array skipped by
`decode_record(skip=...)` is neither decompressed nor checksummed, so reading latents alone
does not pay for the pixel videos (damage there surfaces when they are decoded).
"""

import io
import json
import struct
import zlib
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image

from unity_jax import constants
from unity_jax.data import schema
from unity_jax.data.schema import RecordError

MAGIC = b"OUNI"
_PREFIX = struct.Struct("<4sHHII")  # magic, version, flags, header length, header crc32.
_ARRAY_FIELDS = {"name", "dtype", "shape", "codec", "offset", "length", "crc32"}
CODECS = ("raw", "zlib", "png")
"""Codecs a record may name for an array."""
VIDEO_CODECS = ("auto",) + CODECS
"""Choices for writing videos: a stored codec, or "auto" (zlib unless it saves < 20%, then raw)."""
ZLIB_LEVEL = 6
AUTO_MAX_RATIO = 0.8
DEFAULT_VIDEO_CODEC = "auto"
_GROUPS = ("rgb", "modalities", "gt", "latents", "caption_embedding")


def _default_codec(name: str, video_codec: str) -> str:
  if name == "rgb" or name.startswith("modalities/"):
    return video_codec
  if name.startswith("gt/"):
    return "auto"
  return "raw"  # Latents and embeddings are high-entropy floats: compression buys ~nothing.


def encode_array(array: np.ndarray, codec: str) -> tuple[str, bytes]:
  """Encodes an array's C-ordered bytes with `codec` (VIDEO_CODECS).

  Returns:
    (the codec stored in the header, the encoded bytes).
  """
  data = np.ascontiguousarray(array)
  if codec == "raw":
    return codec, data.tobytes()
  if codec in ("zlib", "auto"):
    raw = data.tobytes()
    packed = zlib.compress(raw, ZLIB_LEVEL)
    if codec == "auto" and len(packed) > AUTO_MAX_RATIO * len(raw):
      return "raw", raw
    return "zlib", packed
  if codec == "png":
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
      raise ValueError(f"png codec needs uint8 [T, H, W, 3], got {data.dtype} {data.shape}")
    buffer = io.BytesIO()
    # One tall image [T*H, W, 3]: PNG's row filters work across the whole clip at once.
    Image.fromarray(data.reshape(-1, data.shape[2], 3)).save(buffer, format="PNG", compress_level=6)
    return codec, buffer.getvalue()
  raise ValueError(f"unknown codec {codec!r}; expected one of {VIDEO_CODECS}")


def encode_record(clip: Mapping[str, Any], video_codec: str = DEFAULT_VIDEO_CODEC,
                  where: str = "clip") -> bytes:
  """Validates `clip` (see schema.py) and returns its OpenUni v1 record bytes."""
  if video_codec not in VIDEO_CODECS:
    raise ValueError(f"unknown video codec {video_codec!r}; expected one of {VIDEO_CODECS}")
  schema.validate_clip(clip, where)
  meta = {field: clip[field] for field in schema.METADATA_FIELDS}
  meta["person_count"] = int(meta["person_count"])
  meta["available"] = {name: bool(clip["available"][name]) for name in constants.MODALITIES}
  specs, blobs, offset = [], [], 0
  for name, array in schema.flatten_arrays(clip).items():
    codec, blob = encode_array(array, _default_codec(name, video_codec))
    specs.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape),
                  "codec": codec, "offset": offset, "length": len(blob),
                  "crc32": zlib.crc32(blob)})
    blobs.append(blob)
    offset += len(blob)
  header = json.dumps({"meta": meta, "arrays": specs}, separators=(",", ":")).encode("utf-8")
  start = struct.pack("<4sHHI", MAGIC, schema.SCHEMA_VERSION, 0, len(header))
  crc = zlib.crc32(header, zlib.crc32(start))
  return b"".join([start, struct.pack("<I", crc), header, *blobs])


def _parse_header(data: bytes, where: str) -> tuple[dict, int]:
  """Checks magic, version, header checksum; returns (header dict, payload offset)."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise RecordError(f"{where}: expected record bytes, got {type(data).__name__}")
  if len(data) < _PREFIX.size:
    raise RecordError(f"{where}: record is {len(data)} bytes, shorter than the "
                      f"{_PREFIX.size}-byte prefix (truncated?)")
  magic, version, flags, header_length, crc = _PREFIX.unpack_from(data)
  if magic != MAGIC:
    raise RecordError(f"{where}: not an OpenUni record (magic {bytes(magic)!r}, "
                      f"expected {MAGIC!r})")
  if version != schema.SCHEMA_VERSION:
    raise RecordError(f"{where}: record has schema version {version}; this reader supports "
                      f"version {schema.SCHEMA_VERSION} only")
  payload_start = _PREFIX.size + header_length
  if payload_start > len(data):
    raise RecordError(f"{where}: header length {header_length} runs past the record end "
                      f"({len(data)} bytes): the record is corrupt or truncated")
  view = memoryview(data)
  actual_crc = zlib.crc32(view[_PREFIX.size:payload_start], zlib.crc32(view[:12]))
  if actual_crc != crc:
    raise RecordError(f"{where}: header checksum mismatch (stored crc32 {crc:#010x}, computed "
                      f"{actual_crc:#010x}): the record is corrupt")
  if flags != 0:
    raise RecordError(f"{where}: unknown flags {flags:#x} for schema version 1")
  try:
    header = json.loads(bytes(data[_PREFIX.size:payload_start]).decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise RecordError(f"{where}: header is not valid UTF-8 JSON ({error})") from None
  if not isinstance(header, dict) or not isinstance(header.get("meta"), dict) or not isinstance(
      header.get("arrays"), list):
    raise RecordError(f"{where}: header must be an object with 'meta' (object) and 'arrays' (list)")
  return header, payload_start


def _check_array_specs(specs: list, payload_length: int, where: str) -> None:
  """Validates names, dtypes, shapes, codecs and the exact tiling of the payload."""
  bindings: dict[str, int] = {}
  names, expected_offset = set(), 0
  specs_in_binding_order = sorted(
      specs, key=lambda s: (not isinstance(s, dict) or s.get("name") != "rgb"))
  for spec in specs_in_binding_order:
    if not isinstance(spec, dict) or set(spec) != _ARRAY_FIELDS:
      raise RecordError(f"{where}: malformed array entry {spec!r}")
    name = spec["name"]
    if not isinstance(name, str) or name in names:
      raise RecordError(f"{where}: array name {name!r} is invalid or repeated")
    names.add(name)
    dtypes, pattern = schema.array_spec(name, where)
    if not isinstance(spec["dtype"], str):
      raise RecordError(f"{where}: {name} dtype must be a string, got {spec['dtype']!r}")
    dtype = schema.dtype_from_name(spec["dtype"], f"{where}: {name}")
    if dtype not in dtypes:
      raise RecordError(f"{where}: {name} has dtype {dtype}, expected "
                        f"{' or '.join(str(d) for d in dtypes)}")
    if not isinstance(spec["shape"], list):
      raise RecordError(f"{where}: {name} shape must be a list, got {spec['shape']!r}")
    schema.check_shape(name, tuple(spec["shape"]), pattern, bindings, where)
    if spec["codec"] not in CODECS or (spec["codec"] == "png" and pattern != schema.VIDEO_PATTERN):
      raise RecordError(f"{where}: {name} has unsupported codec {spec['codec']!r}")
    crc = spec["crc32"]
    if not isinstance(crc, int) or isinstance(crc, bool) or not 0 <= crc < 2**32:
      raise RecordError(f"{where}: {name} has invalid crc32 {crc!r}")
  for spec in specs:  # Payload tiling is checked in stored order.
    offset, length = spec["offset"], spec["length"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, length)) or (
        offset != expected_offset or length < 0):
      raise RecordError(f"{where}: {spec['name']} has offset {offset!r}/length {length!r}, "
                        f"expected offset {expected_offset} and a length >= 0")
    expected_offset += length
  if expected_offset != payload_length:
    raise RecordError(f"{where}: arrays cover {expected_offset} payload bytes but the payload has "
                      f"{payload_length}")
  missing = {"rgb", *(f"modalities/{m}" for m in constants.MODALITIES)} - names
  if missing:
    raise RecordError(f"{where}: missing arrays {sorted(missing)}")


Geometry = Mapping[str, tuple[str, frozenset]]
"""{array name: (dtype name, the shapes a manifest declares for it)}: see declared_geometry."""


def declared_geometry(arrays: Mapping[str, Any], where: str = "manifest") -> dict:
  """The Geometry of a manifest split's "arrays" entry ({name: {"dtype", "shapes": {"TxHxWxC":
  count}}}), which bounds what a record of that split may claim and inflate to."""
  if not isinstance(arrays, Mapping):
    raise RecordError(f"{where}: 'arrays' must be an object, got {type(arrays).__name__}")
  geometry = {}
  for name, stats in arrays.items():
    try:
      shapes = frozenset(tuple(int(size) for size in key.split("x")) for key in stats["shapes"])
      dtype = stats["dtype"]
    except (TypeError, KeyError, ValueError, AttributeError):
      raise RecordError(f"{where}: arrays[{name!r}] must have a 'dtype' and 'shapes' like "
                        f"{{'17x64x64x3': 8}}, got {stats!r}") from None
    geometry[name] = (dtype, shapes)
  return geometry


def _check_geometry(spec: dict, geometry: Geometry, where: str) -> None:
  """A record's array must have a dtype and shape its split's manifest declares."""
  name, shape = spec["name"], tuple(spec["shape"])
  if name not in geometry:
    raise RecordError(f"{where}: {name} is not among the arrays the manifest declares for this "
                      f"split ({sorted(geometry)})")
  dtype, shapes = geometry[name]
  if spec["dtype"] != dtype or shape not in shapes:
    declared = sorted("x".join(map(str, s)) for s in shapes)
    raise RecordError(f"{where}: {name} header says {spec['dtype']} {list(shape)}, but the "
                      f"manifest declares {dtype} {declared} for this split")


def _decode_array(blob: memoryview, spec: dict, where: str) -> np.ndarray:
  name, codec = spec["name"], spec["codec"]
  if zlib.crc32(blob) != spec["crc32"]:
    raise RecordError(f"{where}: {name} checksum mismatch (stored crc32 {spec['crc32']:#010x}, "
                      f"computed {zlib.crc32(blob):#010x}): the record is corrupt")
  dtype = schema.dtype_from_name(spec["dtype"], where)
  shape = tuple(spec["shape"])
  # With a manifest the shape was checked against its declared geometry first, so this bound
  # is the manifest's, not just whatever the record header claims.
  expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
  try:
    if codec == "png":
      image = Image.open(io.BytesIO(blob), formats=["PNG"])
      want = (shape[2], shape[0] * shape[1])
      if image.mode != "RGB" or image.size != want:
        raise RecordError(f"{where}: {name} png is {image.mode} {image.size}, expected RGB {want}")
      return np.array(image).reshape(shape)
    if codec == "zlib":
      inflater = zlib.decompressobj()
      # Bounded: at most one byte past the declared size is ever inflated (no zlib bomb).
      raw = inflater.decompress(blob, expected + 1)
      if len(raw) > expected:
        raise RecordError(f"{where}: {name} zlib stream inflates past the {expected} bytes of "
                          f"{spec['dtype']} {list(shape)}")
      if not inflater.eof or inflater.unused_data:
        raise RecordError(f"{where}: {name} zlib stream is incomplete or has trailing bytes")
    else:
      raw = blob
  except RecordError:
    raise
  except Exception as error:  # zlib.error, or anything PIL's PNG decoder raises on bad bytes.
    raise RecordError(f"{where}: {name} could not be decoded with {codec} ({error})") from None
  if len(raw) != expected:
    raise RecordError(f"{where}: {name} decodes to {len(raw)} bytes, expected {expected} for "
                      f"{spec['dtype']} {list(shape)}")
  return np.frombuffer(raw, dtype).reshape(shape).copy()  # Writable, owns its memory.


def decode_record(data: bytes, where: str = "record", skip: Iterable[str] = (),
                  geometry: Geometry | None = None) -> dict[str, Any]:
  """Decodes OpenUni v1 record bytes into the clip dict of schema.py.

  Args:
    data: the record bytes (as stored in one ArrayRecord record).
    where: a location for error messages, e.g. "train/general-00000-of-00004.array_record
      record 17".
    skip: groups not to decode, from ("rgb", "modalities", "gt", "latents",
      "caption_embedding"); they are absent from the result (header and structure are still
      validated; their bytes are neither checksummed nor decompressed).
    geometry: the record's split geometry from its manifest (declared_geometry; the reader
      passes it): every array's dtype and shape must be declared there, which bounds zlib
      inflation by frames x height x width x channels x itemsize of the manifest.

  Raises:
    RecordError: naming `where` and what is wrong, for any corrupt, truncated or foreign input.
  """
  skip = set(skip)
  if skip - set(_GROUPS):
    raise ValueError(f"skip must be a subset of {_GROUPS}, got {sorted(skip)}")
  header, payload_start = _parse_header(data, where)
  meta = header["meta"]
  if set(meta) != set(schema.METADATA_FIELDS) | {"available"}:
    raise RecordError(f"{where}: header meta has fields {sorted(meta)}, expected "
                      f"{sorted(schema.METADATA_FIELDS + ('available',))}")
  schema.validate_metadata(meta, where)
  payload = memoryview(data)[payload_start:]
  _check_array_specs(header["arrays"], len(payload), where)
  if geometry is not None:
    for spec in header["arrays"]:
      _check_geometry(spec, geometry, where)
  clip: dict[str, Any] = dict(meta)
  clip["available"] = dict(meta["available"])
  for spec in header["arrays"]:
    group, _, leaf = spec["name"].partition("/")
    if group in skip:
      continue
    blob = payload[spec["offset"]:spec["offset"] + spec["length"]]
    array = _decode_array(blob, spec, where)
    if leaf:
      clip.setdefault(group, {})[leaf] = array
    else:
      clip[group] = array
  return clip


def peek_metadata(data: bytes, where: str = "record") -> dict[str, Any]:
  """Returns a record's metadata and array specs after checking the header, decoding nothing."""
  header, _ = _parse_header(data, where)
  schema.validate_metadata(header["meta"], where)
  return {**header["meta"], "arrays": header["arrays"]}
