"""Parameter fingerprints and safetensors export.

Fingerprint (summary.json's params_sha256 / ema_sha256): sha256 over the raw little-endian
float32 bytes of every parameter, concatenated in sorted 'a/b/c' path order, after gathering
to the host. Anyone can recompute it from an export:
  sha = hashlib.sha256(); [sha.update(t[k].astype('<f4').tobytes()) for k in sorted(t)]
Export: safetensors files (one tensor per parameter, named by its 'a/b/c' path) plus a JSON
index {"format", "kind", "step", "sha256", "weight_map": {name: file}, "tensors": {name:
{"shape", "dtype", "file"}}}. Large models split into files of at most `max_file_bytes`.
"""

import hashlib
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from unity_jax import io_utils
from unity_jax.train import optim

INDEX_SUFFIX = ".safetensors.index.json"


def to_host(tree) -> dict[str, np.ndarray]:
  """{'a/b/c': float32 numpy} for every leaf, gathered from all devices and processes.

  Every process must call this (it is a collective when arrays span processes).
  """
  def gather(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x), np.float32)
  flat = jax.tree_util.tree_leaves_with_path(tree)
  return {optim.leaf_path(path): gather(x) for path, x in flat}


def fingerprint(host_tree: dict[str, np.ndarray]) -> str:
  """sha256 hex of the float32 bytes in sorted path order (see the module docstring)."""
  sha = hashlib.sha256()
  for name in sorted(host_tree):
    sha.update(np.ascontiguousarray(host_tree[name], dtype="<f4").tobytes())
  return sha.hexdigest()


def export_safetensors(host_tree: dict[str, np.ndarray], out_dir: str, *, kind: str = "ema",
                       step: int | None = None, max_file_bytes: int = 4 << 30) -> str:
  """Writes `host_tree` as safetensors + index into out_dir; returns the index path."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  groups, current, size = [], {}, 0
  for name in sorted(host_tree):
    array = np.ascontiguousarray(host_tree[name])
    if current and size + array.nbytes > max_file_bytes:
      groups.append(current)
      current, size = {}, 0
    current[name] = array
    size += array.nbytes
  groups.append(current)
  weight_map, tensors = {}, {}
  for i, group in enumerate(groups):
    file_name = (f"{kind}.safetensors" if len(groups) == 1 else
                 f"{kind}-{i + 1:05d}-of-{len(groups):05d}.safetensors")
    with io_utils.atomic_path(os.path.join(out_dir, file_name)) as tmp:
      save_file(group, tmp, metadata={"format": "unity_jax"})
    for name, array in group.items():
      weight_map[name] = file_name
      tensors[name] = {"shape": list(array.shape), "dtype": str(array.dtype), "file": file_name}
  index = {"format": "unity_jax", "kind": kind, "step": step,
           "sha256": fingerprint(host_tree), "weight_map": weight_map, "tensors": tensors}
  index_path = os.path.join(out_dir, kind + INDEX_SUFFIX)
  # Written last: an index names only complete tensor files (each renamed into place whole).
  io_utils.atomic_write_json(index_path, index)
  return index_path


def load_safetensors(index_path: str) -> dict[str, np.ndarray]:
  """{'a/b/c': array} from an index written by export_safetensors (checks the sha256)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  with open(index_path) as f:
    index = json.load(f)
  folder = os.path.dirname(index_path)
  out = {}
  for file_name in sorted(set(index["weight_map"].values())):
    out.update(load_file(os.path.join(folder, file_name)))
  if fingerprint(out) != index["sha256"]:
    raise ValueError(f"{index_path}: tensors do not match the recorded sha256 (corrupt or "
                     "partially written export)")
  return out


def unflatten(host_tree: dict[str, np.ndarray]) -> dict:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (the model's params pytree)."""
  nested = {}
  for name, value in host_tree.items():
    node = nested
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return nested
