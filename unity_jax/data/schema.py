"""OpenUni v1: the clip contract, its validation and the per-record index row.

A clip is the dict produced by `unity_jax.data.synthetic.generate_clip` and by the real-video
converter, and returned by the OpenUni reader:

  id: str                     unique within a split
  source: str                 one of constants.SOURCES
  caption: str
  person_count: int           >= 0, or -1 when unknown (real videos without annotation)
  segmentation_targets: str   fills the segmentation modality prompt
  rgb: uint8 [T, H, W, 3]
  modalities: {name: uint8 [T, H, W, 3]} for every name in constants.MODALITIES (rendered
      RGB-like videos; an unavailable modality is stored as given, by convention all zeros)
  available: {name: bool} for every name in constants.MODALITIES
  gt (optional, evaluation splits): any non-empty subset of
      depth f32 [T, H, W], flow f32 [T, H, W, 2], instance i32 [T, H, W], semantic i32 [T, H, W],
      keypoints f32 [T, P, 17, 3], part_index u8 [T, H, W], uv f32 [T, H, W, 2]
  latents (optional): {"rgb" or modality name: float32/float16/bfloat16 [F', H', W', C]}, all of
      one shape (precomputed video-VAE latents so large runs skip re-encoding)
  caption_embedding (optional): float32/float16/bfloat16 [L, D] (precomputed text-encoder
      output for the real tokens of the caption, unpadded)

The binary record layout lives in `record.py`; docs/openuni_format.md describes both.
"""

from typing import Any, Mapping

import ml_dtypes
import numpy as np

from unity_jax import constants

SCHEMA_VERSION = 1
FORMAT_NAME = "openuni"

METADATA_FIELDS = ("id", "source", "caption", "person_count", "segmentation_targets")
OPTIONAL_GROUPS = ("gt", "latents", "caption_embedding")
LATENT_NAMES = ("rgb",) + constants.MODALITIES
UNKNOWN_PERSON_COUNT = -1
KEYPOINTS_PER_PERSON = 17

# Shape patterns: str entries are symbols bound once per clip ("T", "H", "W" are shared by all
# pixel arrays); int entries are fixed sizes.
VIDEO_PATTERN = ("T", "H", "W", 3)
GT_SPECS = {
    "depth": (np.float32, ("T", "H", "W")),
    "flow": (np.float32, ("T", "H", "W", 2)),
    "instance": (np.int32, ("T", "H", "W")),
    "semantic": (np.int32, ("T", "H", "W")),
    "keypoints": (np.float32, ("T", "P", KEYPOINTS_PER_PERSON, 3)),
    "part_index": (np.uint8, ("T", "H", "W")),
    "uv": (np.float32, ("T", "H", "W", 2)),
}
EMBEDDING_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
LATENT_PATTERN = ("F", "h", "w", "C")
CAPTION_EMBEDDING_PATTERN = ("L", "D")


class RecordError(ValueError):
  """A clip or an OpenUni record is malformed; the message names where and what is wrong."""


def dtype_from_name(name: str, where: str) -> np.dtype:
  """Returns the numpy dtype for a stored dtype name (numpy names, plus "bfloat16")."""
  allowed = {"uint8", "int32", "float32", "float16", "bfloat16"}
  if name not in allowed:
    raise RecordError(f"{where}: dtype {name!r} is not one of {sorted(allowed)}")
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def array_spec(name: str, where: str) -> tuple[tuple[np.dtype, ...], tuple]:
  """Returns (allowed dtypes, shape pattern) for a flat array name such as "gt/depth"."""
  if name == "rgb":
    return (np.dtype(np.uint8),), VIDEO_PATTERN
  group, _, leaf = name.partition("/")
  if group == "modalities" and leaf in constants.MODALITIES:
    return (np.dtype(np.uint8),), VIDEO_PATTERN
  if group == "gt" and leaf in GT_SPECS:
    dtype, pattern = GT_SPECS[leaf]
    return (np.dtype(dtype),), pattern
  if group == "latents" and leaf in LATENT_NAMES:
    return EMBEDDING_DTYPES, LATENT_PATTERN
  if name == "caption_embedding":
    return EMBEDDING_DTYPES, CAPTION_EMBEDDING_PATTERN
  raise RecordError(
      f"{where}: unknown array {name!r}; expected rgb, "
      f"modalities/<{'|'.join(constants.MODALITIES)}>,"
      f" gt/<{'|'.join(GT_SPECS)}>, latents/<{'|'.join(LATENT_NAMES)}> or caption_embedding")


def check_shape(name: str, shape: tuple, pattern: tuple, bindings: dict, where: str) -> None:
  """Checks `shape` against `pattern`, binding symbols in `bindings` (shared across arrays)."""
  if len(shape) != len(pattern):
    raise RecordError(f"{where}: {name} has shape {tuple(shape)}, expected rank {len(pattern)} "
                      f"{_pattern_text(pattern)}")
  for axis, (size, want) in enumerate(zip(shape, pattern)):
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
      raise RecordError(f"{where}: {name} has invalid size {size!r} on axis {axis}")
    if isinstance(want, int):
      ok = size == want
    else:
      ok = bindings.setdefault(want, int(size)) == size
    if not ok:
      raise RecordError(
          f"{where}: {name} has shape {tuple(shape)}, expected {_pattern_text(pattern)} with "
          f"{', '.join(f'{k}={v}' for k, v in bindings.items())}")
  if pattern == VIDEO_PATTERN and 0 in shape:
    raise RecordError(f"{where}: {name} has an empty video shape {tuple(shape)}")


def _pattern_text(pattern: tuple) -> str:
  return "[" + ", ".join(str(p) for p in pattern) + "]"


def flatten_arrays(clip: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Returns {flat name: array} for every array of a clip ("rgb", "modalities/depth", ...)."""
  flat = {"rgb": clip["rgb"]}
  for group in ("modalities", "gt", "latents"):
    for leaf, value in (clip.get(group) or {}).items():
      flat[f"{group}/{leaf}"] = value
  if clip.get("caption_embedding") is not None:
    flat["caption_embedding"] = clip["caption_embedding"]
  return flat


def validate_metadata(meta: Mapping[str, Any], where: str) -> None:
  """Validates the non-array fields of a clip (or of a record header)."""
  for field in METADATA_FIELDS + ("available",):
    if field not in meta:
      raise RecordError(f"{where}: missing field {field!r}")
  for field in ("id", "caption", "segmentation_targets"):
    if not isinstance(meta[field], str):
      raise RecordError(f"{where}: field {field!r} must be a str, got {type(meta[field]).__name__}")
  if not meta["id"]:
    raise RecordError(f"{where}: field 'id' is empty")
  if meta["source"] not in constants.SOURCES:
    raise RecordError(f"{where}: source {meta['source']!r} is not one of {list(constants.SOURCES)}")
  count = meta["person_count"]
  if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < -1:
    raise RecordError(f"{where}: person_count must be an int >= -1 (-1 = unknown), got {count!r}")
  available = meta["available"]
  if not isinstance(available, Mapping) or set(available) != set(constants.MODALITIES):
    keys = sorted(available) if isinstance(available, Mapping) else type(available).__name__
    raise RecordError(f"{where}: 'available' must map exactly {list(constants.MODALITIES)} to "
                      f"bools, got {keys}")
  for name, flag in available.items():
    if not isinstance(flag, (bool, np.bool_)):
      raise RecordError(f"{where}: available[{name!r}] must be a bool, got {flag!r}")


def validate_clip(clip: Mapping[str, Any], where: str = "clip") -> None:
  """Raises RecordError unless `clip` follows the contract in this module's docstring."""
  if not isinstance(clip, Mapping):
    raise RecordError(f"{where}: a clip must be a dict, got {type(clip).__name__}")
  validate_metadata(clip, where)
  where = f"{where} (id {clip['id']!r})"
  for group in ("rgb", "modalities"):
    if group not in clip:
      raise RecordError(f"{where}: missing field {group!r}")
  modalities = clip["modalities"]
  if not isinstance(modalities, Mapping) or set(modalities) != set(constants.MODALITIES):
    keys = sorted(modalities) if isinstance(modalities, Mapping) else type(modalities).__name__
    raise RecordError(f"{where}: 'modalities' must hold exactly {list(constants.MODALITIES)}, "
                      f"got {keys}")
  for group in ("gt", "latents"):
    value = clip.get(group)
    if value is not None and (not isinstance(value, Mapping) or not value):
      raise RecordError(f"{where}: {group!r} must be a non-empty dict when present")
  extra = set(clip) - set(METADATA_FIELDS) - {"available", "rgb", "modalities", *OPTIONAL_GROUPS}
  if extra:
    raise RecordError(f"{where}: unknown fields {sorted(extra)}")
  validate_arrays(flatten_arrays(clip), where)


def validate_arrays(arrays: Mapping[str, Any], where: str) -> None:
  """Checks names, dtypes and shapes of flat arrays (shared symbols must agree)."""
  bindings: dict[str, int] = {}
  for name in sorted(arrays, key=lambda n: (n != "rgb", n)):  # rgb binds T, H, W first.
    value = arrays[name]
    dtypes, pattern = array_spec(name, where)
    if not isinstance(value, np.ndarray):
      raise RecordError(f"{where}: {name} must be a numpy array, got {type(value).__name__}")
    if value.dtype not in dtypes:
      raise RecordError(f"{where}: {name} has dtype {value.dtype}, expected "
                        f"{' or '.join(str(d) for d in dtypes)}")
    check_shape(name, value.shape, pattern, bindings, where)


def availability_mask(available: Mapping[str, bool]) -> int:
  """Packs {modality: bool} into an int with bit k set when MODALITIES[k] is available."""
  return sum(1 << k for k, name in enumerate(constants.MODALITIES) if available[name])


def available_names(mask: int) -> tuple[str, ...]:
  """Inverse of `availability_mask`: the available modality names in id order."""
  return tuple(name for k, name in enumerate(constants.MODALITIES) if mask >> k & 1)


def index_row(clip: Mapping[str, Any]) -> list:
  """The manifest's per-record index row: [id, person_count, availability mask]."""
  return [clip["id"], int(clip["person_count"]), availability_mask(clip["available"])]


INDEX_COLUMNS = ("id", "person_count", "available_mask")
