"""`unity-data precompute`: codec latents and text embeddings of an OpenUni split, in tensorstore.

  unity-data precompute --data DIR --config CFG [--out DIR|gs://...] [--split S ...]
                        [--skip-bad] [--config.KEY=VALUE ...]

Stored layout (zarr v3 through tensorstore, docs/openuni_format.md section 11), N clips per split
in `OpenUniReader.index(split)` order (source, then position), one chunk per clip:

  {out}/signature.json                     what was computed (codec, text encoder, geometry,
                                           dtype, data fingerprint); a re-run must match it
  {out}/{split}/latents/{stream}           [N, F', H', W', C]   stream = rgb | a modality;
                                           unavailable modalities have no chunk (fill NaN)
  {out}/{split}/caption_embedding          [N, Lc, D]  zero beyond caption_length
  {out}/{split}/caption_length             int32 [N]
  {out}/{split}/prompt_embedding           [N, M, Lm, D]  the M = 5 modality prompts
  {out}/{split}/prompt_length              int32 [N, M]
  {out}/{split}/done                       uint8 [N]: 0 pending, 1 written, 2 bad (skipped)
  {out}/{split}/bad/{index}.json           why clip `index` was skipped (--skip-bad)
  {out}/empty/{caption,prompt}_embedding   [1, Lc|Lm, D]: the empty text (caption dropout, CFG,
                                           RGB-only samples' prompt)
  {out}/precompute.json                    the manifest, written last (atomically)
The text arrays exist only with config.model.text_encoder = "precomputed".

Resume and determinism. A clip's chunks are written (each chunk file atomically, by tensorstore),
then its `done` chunk: a kill leaves finished clips marked and at most a group of unmarked ones,
which a re-run encodes again to the same bytes. Every video is encoded alone on its device
(fixed per-device batch `precompute.batch_per_device`, padded, padding dropped) and each text
encoder call holds one clip's texts, so no byte depends on grouping, device or process count.

Processes: with jax.distributed (launched like training), process i takes clips i::n of each
split; the codec is replicated over its local devices and each encode call's batch is sharded
over them. The process that finishes last (all `done` set) writes precompute.json and the
reference in the data manifest (identical bytes whichever process it is).
"""

import argparse
import ast
import hashlib
import json
import os
import signal
import sys
from typing import Any, Sequence

import ml_dtypes
import numpy as np
import tensorstore as ts

from unity_jax import constants
from unity_jax import io_utils
from unity_jax.data import precomputed
from unity_jax.data import prompts
from unity_jax.data import reader as reader_lib
from unity_jax.data import text_encoders
from unity_jax.data import writer as writer_lib
from unity_jax.data.precomputed import MANIFEST_NAME, STREAMS, is_url as _is_url, kvstore
from unity_jax.data.precomputed import get_bytes as _get
from unity_jax.data.schema import RecordError

FORMAT_NAME = "openuni-precomputed"
FORMAT_VERSION = 1
DECODE_SKIP = ("gt", "latents", "caption_embedding")
KILL_ENV = "UNITY_PRECOMPUTE_KILL_AFTER_CHUNKS"
"""Test hook: SIGKILL this process after writing that many chunks (mid-clip on purpose)."""
_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}},
           {"name": "zstd", "configuration": {"level": 3}}]
_PENDING, _WRITTEN, _BAD = precomputed.PENDING, precomputed.WRITTEN, precomputed.BAD


def _put(root: str, key: str, data: bytes) -> None:
  """Writes one small file atomically (io_utils locally, a single kvstore write elsewhere)."""
  if _is_url(root):
    store = ts.KvStore.open(kvstore(root)).result()
    store.write(key, data).result()
  else:
    io_utils.atomic_write_bytes(os.path.join(root, key), data)


def _json_bytes(value: Any) -> bytes:
  return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _array(root: str, name: str, shape: Sequence[int], dtype: str, fill: Any,
           create: bool) -> ts.TensorStore:
  metadata = {"shape": list(shape), "data_type": dtype, "fill_value": fill, "codecs": _CODECS,
              "chunk_grid": {"name": "regular",
                             "configuration": {"chunk_shape": [1, *shape[1:]]}},
              "chunk_key_encoding": {"name": "default"}}
  spec = {"driver": "zarr3", "kvstore": kvstore(root, name)}
  if create:
    spec["metadata"] = metadata
  return ts.open(spec, create=create, open=True).result()


def split_layout(config, num_clips: int, codec) -> dict[str, tuple[tuple, str, Any]]:
  """{array name: (shape, dtype, fill value)} of one split (module docstring)."""
  d, dtype = config.data, config.precompute.dtype
  latent = codec.latent_shape(d.num_frames, d.height, d.width)
  arrays = {f"latents/{s}": ((num_clips, *latent), dtype, "NaN") for s in STREAMS}
  if config.model.text_encoder == "precomputed":
    dim, m = config.model.text_dim, len(constants.MODALITIES)
    arrays.update({
        "caption_embedding": ((num_clips, d.caption_len, dim), dtype, "NaN"),
        "caption_length": ((num_clips,), "int32", -1),
        "prompt_embedding": ((num_clips, m, d.prompt_len, dim), dtype, "NaN"),
        "prompt_length": ((num_clips, m), "int32", -1),
        # Bit 0: the caption was cut to data.caption_len; bit 1: a modality prompt was cut to
        # data.prompt_len. The manifest counts them, unity-data precompute warns.
        "text_truncated": ((num_clips,), "uint8", 0)})
  arrays["done"] = ((num_clips,), "uint8", _PENDING)
  return arrays


def data_fingerprint(data_dir: str, split: str) -> str:
  """sha256 over the split's shard sha256s: a rewritten split makes precomputed arrays stale."""
  entry = reader_lib.OpenUniReader(data_dir).split_entry(split)
  return hashlib.sha256("".join(s["sha256"] for s in entry["shards"]).encode()).hexdigest()


def signature(config, data_dir: str, splits: Sequence[str]) -> dict:
  """Everything the stored bytes depend on; a resumed run must have the same."""
  d = config.data
  return {"codec": config.codec.to_dict(), "dtype": config.precompute.dtype,
          "batch_per_device": config.precompute.batch_per_device,
          "text_encoder": config.model.text_encoder,
          "text": config.text.to_dict() if config.model.text_encoder == "precomputed" else None,
          "text_dim": config.model.text_dim,
          "geometry": [d.num_frames, d.height, d.width, d.caption_len, d.prompt_len],
          "data": {s: data_fingerprint(data_dir, s) for s in splits}}


def _storage(array: np.ndarray, dtype: str) -> np.ndarray:
  return array.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)


class _Encoder:
  """codec.encode jitted over the local devices: [B, T, H, W, 3] uint8 -> float32 latents,
  B = batch_per_device x local devices, the batch sharded one slice per device."""

  def __init__(self, codec, batch_per_device: int):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from jax.sharding import Mesh, NamedSharding  # pylint: disable=g-import-not-at-top
    from jax.sharding import PartitionSpec  # pylint: disable=g-import-not-at-top
    mesh = Mesh(np.asarray(jax.local_devices()), ("batch",))
    self.sharding = NamedSharding(mesh, PartitionSpec("batch"))
    self.codec = jax.device_put(codec, NamedSharding(mesh, PartitionSpec()))
    self.batch = batch_per_device * len(jax.local_devices())
    self._jax = jax
    self._fn = jax.jit(lambda c, v: c.encode(v).astype(jnp.float32),
                       out_shardings=self.sharding)

  def __call__(self, videos: list[np.ndarray]) -> list[np.ndarray]:
    """Encodes uint8 [T, H, W, 3] videos in fixed-size calls; returns float32 latents."""
    out = []
    for start in range(0, len(videos), self.batch):
      chunk = videos[start:start + self.batch]
      padded = np.stack(chunk + [chunk[0]] * (self.batch - len(chunk)))
      latents = self._fn(self.codec, self._jax.device_put(padded, self.sharding))
      out.extend(np.asarray(latents)[:len(chunk)])
    return out


class _Split:
  """The open arrays of one split plus its clip list."""

  def __init__(self, config, data_dir: str, out: str, split: str, codec):
    self.name, self.out = split, out
    self.reader = reader_lib.OpenUniReader(data_dir)
    self.rows = self.reader.index(split)
    self.layout = split_layout(config, len(self.rows), codec)
    self.arrays = {name: _array(out, f"{split}/{name}", *spec, create=True)
                   for name, spec in self.layout.items()}
    self._sources: dict[str, reader_lib.OpenUniSource] = {}

  def done(self) -> np.ndarray:
    return self.arrays["done"].read().result()

  def clip(self, index: int) -> tuple[dict, str]:
    row = self.rows[index]
    if row["source"] not in self._sources:
      self._sources[row["source"]] = self.reader.source(self.name, row["source"], skip=DECODE_SKIP)
    source = self._sources[row["source"]]
    return source[row["position"]], source.where(row["position"])


class Precomputer:
  """Encodes this process's clips of each split (module docstring); `run()` does everything."""

  def __init__(self, config, data_dir: str, out: str, *, skip_bad: bool = False,
               process_index: int = 0, process_count: int = 1):
    from unity_jax.model import codec as codec_lib  # pylint: disable=g-import-not-at-top
    self.config, self.data_dir, self.out, self.skip_bad = config, data_dir, out, skip_bad
    self.process_index, self.process_count = process_index, process_count
    self.codec = codec_lib.make_codec(config)
    self.text = text_encoders.make_text_encoder(config)
    self.dtype = config.precompute.dtype
    self.encoder = _Encoder(self.codec, config.precompute.batch_per_device)
    self.group = self.encoder.batch  # Clips per write group: kill granularity vs call count.
    self.chunks_written = 0
    self._kill_after = int(os.environ.get(KILL_ENV, "0") or 0)

  def _check_signature(self, splits: Sequence[str]) -> dict:
    sig = signature(self.config, self.data_dir, splits)
    old = _get(self.out, "signature.json")
    if old is not None and json.loads(old) != sig:
      raise ValueError(f"{self.out} holds a precompute of another configuration or data "
                       f"(signature.json differs: {json.loads(old)} vs {sig}); choose another "
                       "--out or delete it")
    if old is None:
      _put(self.out, "signature.json", _json_bytes(sig))
    return sig

  def _write(self, store: ts.TensorStore, index: int, value: np.ndarray) -> None:
    store[index].write(value).result()
    self.chunks_written += 1
    if self._kill_after and self.chunks_written >= self._kill_after:
      os.kill(os.getpid(), signal.SIGKILL)

  def _expected_shape(self) -> tuple[int, int, int, int]:
    d = self.config.data
    return (d.num_frames, d.height, d.width, 3)

  def _load(self, split: _Split, index: int) -> tuple[dict | None, dict | None]:
    """(clip, None) or (None, bad-record info); raises without --skip-bad."""
    where = f"{split.name} clip {index}"
    try:
      clip, where = split.clip(index)
      for stream in STREAMS:
        video = clip["rgb"] if stream == "rgb" else clip["modalities"][stream]
        if tuple(video.shape) != self._expected_shape():
          raise RecordError(f"{where}: {stream} is {list(video.shape)}, the config expects "
                            f"{list(self._expected_shape())} (data.num_frames/height/width); "
                            "precompute with the config the data was written for")
      return clip, None
    except (RecordError, ValueError) as error:
      message = str(error)
      if not self.skip_bad:
        raise RecordError(message if message.startswith(where) else f"{where}: {message}") \
            from None
      return None, {"index": index, "id": split.rows[index]["id"], "where": where,
                    "error": message}

  def _encode_group(self, split: _Split, indices: list[int]) -> None:
    loaded = [(i, *self._load(split, i)) for i in indices]
    videos, owners = [], []
    for i, clip, _ in loaded:
      if clip is None:
        continue
      for stream in STREAMS:
        if stream == "rgb" or clip["available"][stream]:
          videos.append(clip["rgb"] if stream == "rgb" else clip["modalities"][stream])
          owners.append((i, stream))
    latents = dict(zip(owners, self.encoder(videos)))
    for i, clip, bad in loaded:
      if clip is None:
        _put(self.out, f"{split.name}/bad/{i}.json", _json_bytes(bad))
        self._write(split.arrays["done"], i, np.uint8(_BAD))
        continue
      for stream in STREAMS:
        if (i, stream) in latents:
          self._write(split.arrays[f"latents/{stream}"], i,
                      _storage(latents[i, stream], self.dtype))
      if self.text is not None:
        self._write_text(split, i, clip)
      self._write(split.arrays["done"], i, np.uint8(_WRITTEN))

  def _write_text(self, split: _Split, index: int, clip: dict) -> None:
    d = self.config.data
    caption, caption_length = self.text([clip["caption"]], d.caption_len)
    texts = [prompts.modality_prompt(m, clip["segmentation_targets"])
             for m in constants.MODALITIES]
    prompt, prompt_length = self.text(texts, d.prompt_len)
    self._write(split.arrays["caption_embedding"], index, _storage(caption[0], self.dtype))
    self._write(split.arrays["caption_length"], index, caption_length[0])
    self._write(split.arrays["prompt_embedding"], index, _storage(prompt, self.dtype))
    self._write(split.arrays["prompt_length"], index, prompt_length)
    cut = (int(self.text.truncated([clip["caption"]], d.caption_len)[0])
           | 2 * int(self.text.truncated(texts, d.prompt_len).any()))
    self._write(split.arrays["text_truncated"], index, np.uint8(cut))

  def _write_empty(self) -> dict | None:
    if self.text is None:
      return None
    d, lengths = self.config.data, {}
    for name, length in (("caption", d.caption_len), ("prompt", d.prompt_len)):
      embedding, count = self.text([""], length)
      store = _array(self.out, f"empty/{name}_embedding", embedding.shape, self.dtype, "NaN",
                     create=True)
      store.write(_storage(embedding, self.dtype)).result()
      lengths[f"{name}_length"] = int(count[0])
    return lengths

  def run(self, splits: Sequence[str] | None = None) -> dict | None:
    """Encodes this process's share; returns the manifest if this process wrote it."""
    splits = tuple(splits or reader_lib.OpenUniReader(self.data_dir).splits)
    sig = self._check_signature(splits)
    empty = self._write_empty()
    opened = [_Split(self.config, self.data_dir, self.out, s, self.codec) for s in splits]
    for split in opened:
      done = split.done()
      mine = [i for i in range(self.process_index, len(split.rows), self.process_count)
              if done[i] == _PENDING]
      for start in range(0, len(mine), self.group):
        self._encode_group(split, mine[start:start + self.group])
    if any((split.done() == _PENDING).any() for split in opened):
      return None  # Another process is still writing; the last one writes the manifest.
    manifest = self._manifest(sig, opened, empty)
    _put(self.out, MANIFEST_NAME, _json_bytes(manifest))
    self._reference_from_data_manifest(sig)
    return manifest

  def _manifest(self, sig: dict, opened: list[_Split], empty: dict | None) -> dict:
    splits = {}
    for split in opened:
      done = split.done()
      bad = [json.loads(_get(self.out, f"{split.name}/bad/{i}.json"))
             for i in np.flatnonzero(done == _BAD)]
      splits[split.name] = {
          "num_clips": len(split.rows), "written": int((done == _WRITTEN).sum()),
          "skipped_bad": len(bad), "bad": bad, **_truncation_counts(split, done),
          "arrays": {name: {"shape": list(shape), "dtype": dtype}
                     for name, (shape, dtype, _) in split.layout.items()},
          "clips": [[r["id"], r["source"], r["position"]] for r in split.rows]}
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "layout": "docs/openuni_format.md "
            "section 11", "streams": list(STREAMS), "modalities": list(constants.MODALITIES),
            "signature": sig, "empty_text": empty, "splits": splits}

  def _reference_from_data_manifest(self, sig: dict) -> None:
    """Adds {"precomputed": {out: {...}}} to the data manifest (under the writers' lock)."""
    root = os.path.realpath(self.data_dir)
    out = self.out if _is_url(self.out) else os.path.realpath(self.out)
    if not _is_url(out) and os.path.commonpath([root, out]) == root:
      out = os.path.relpath(out, root)
    lock = writer_lib._file_lock  # pylint: disable=protected-access
    with lock(os.path.join(self.data_dir, ".manifest.lock"), blocking=True, busy_message=""):
      manifest = writer_lib.read_manifest(self.data_dir)
      manifest.setdefault("precomputed", {})[out] = {
          "manifest": MANIFEST_NAME, "codec": sig["codec"]["name"], "dtype": sig["dtype"],
          "text_encoder": sig["text_encoder"], "data": sig["data"]}
      writer_lib.atomic_write_json(os.path.join(self.data_dir, writer_lib.MANIFEST_NAME),
                                   manifest)


def _truncation_counts(split: _Split, done: np.ndarray) -> dict:
  """{"truncated_captions": n, "truncated_prompts": m} over the split's written clips."""
  if "text_truncated" not in split.arrays:
    return {}
  flags = np.asarray(split.arrays["text_truncated"].read().result())[done == _WRITTEN]
  return {"truncated_captions": int((flags & 1).sum()),
          "truncated_prompts": int(((flags & 2) > 0).sum())}


def run(config, data_dir: str, out: str | None = None, *, splits: Sequence[str] | None = None,
        skip_bad: bool = False, process_index: int = 0, process_count: int = 1) -> dict | None:
  """Precomputes `data_dir` into `out` (default {data_dir}/precomputed); see Precomputer."""
  out = out or os.path.join(data_dir, "precomputed")
  return Precomputer(config, data_dir, out, skip_bad=skip_bad, process_index=process_index,
                     process_count=process_count).run(splits)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="unity-data precompute", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="OpenUni data directory")
  parser.add_argument("--config", required=True, metavar="configs/NAME.py[:ARGS]",
                      help="codec, text encoder, geometry and precompute.* come from it")
  parser.add_argument("--out", help="output directory or URL (default DATA/precomputed)")
  parser.add_argument("--split", action="append", help="split(s) to do (default: all)")
  parser.add_argument("--skip-bad", action="store_true",
                      help="count and list records that fail to decode instead of stopping")
  return parser


def _apply_overrides(config, overrides: Sequence[str]) -> None:
  """--config.a.b=VALUE (a Python literal, else a string), like unity-train's flags."""
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise ValueError(f"unexpected argument {item!r} (overrides look like --config.KEY=VALUE)")
    key, _, text = item[len("--config."):].partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node, parts = config, key.split(".")
    for part in parts[:-1]:
      node = node[part]
    if parts[-1] not in node:
      raise ValueError(f"--config.{key}: no such config key")
    node[parts[-1]] = value


def main(argv: Sequence[str]) -> int:
  """`unity-data precompute ...`; prints the manifest summary (or this process's share)."""
  args, extra = _parser().parse_known_args(list(argv))
  from unity_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from unity_jax.train import distributed  # pylint: disable=g-import-not-at-top
  try:
    config = config_lib.load_config(args.config)
    _apply_overrides(config, extra)
    config_lib.validate(config)
    distributed.maybe_initialize(config.train.distributed)
    import jax  # pylint: disable=g-import-not-at-top
    manifest = run(config, args.data, args.out, splits=args.split, skip_bad=args.skip_bad,
                   process_index=jax.process_index(), process_count=jax.process_count())
  except (RecordError, ValueError, KeyError, config_lib.ConfigError) as error:
    print(f"unity-data precompute: error: {error}", file=sys.stderr)
    return 2
  summary = {"process": jax.process_index(), "processes": jax.process_count()}
  if manifest is None:
    summary["manifest"] = "written by the last process to finish"
  else:
    keys = ("num_clips", "written", "skipped_bad", "truncated_captions", "truncated_prompts")
    summary.update({name: {k: entry[k] for k in keys if k in entry}
                    for name, entry in manifest["splits"].items()})
    for name, entry in manifest["splits"].items():
      if entry.get("truncated_captions") or entry.get("truncated_prompts"):
        print(f"unity-data precompute: warning: split {name!r}: "
              f"{entry['truncated_captions']} captions longer than data.caption_len="
              f"{config.data.caption_len} and {entry['truncated_prompts']} clips with a modality "
              f"prompt longer than data.prompt_len={config.data.prompt_len} were cut to fit",
              file=sys.stderr)
  print(json.dumps(summary))
  return 0
