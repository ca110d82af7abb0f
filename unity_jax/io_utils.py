"""Atomic file output: readers (and a crash) see the previous file or the new one, never half.

  atomic_write_json("runs/x/summary.json", summary)       # serialised before any file exists
  atomic_write_text("runs/x/report.html", page)
  with atomic_path("runs/x/export/ema.safetensors") as tmp:   # for writers that take a path
    save_file(tensors, tmp)

Each write goes to a hidden temp file in the target's directory (same file system, so
`os.replace` is an atomic rename), is fsynced, then renamed over the target. On any error the
temp file is removed and the target is untouched. The temp name keeps the target's suffix
(`.x.tmp-PID-RAND.mp4`) because imageio and numpy choose the format from it.
"""

import contextlib
import json
import os
import secrets
from typing import Any, Iterator

TMP_MARKER = ".tmp-"
"""Part of every temp file name (the shard writer's staging clean-up looks for ".tmp")."""


def temp_path(path: str) -> str:
  """A fresh hidden temp name next to `path` with the same suffix."""
  directory, name = os.path.split(os.path.abspath(path))
  stem, suffix = os.path.splitext(name)
  return os.path.join(directory,
                      f".{stem}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, *, make_dirs: bool = True) -> Iterator[str]:
  """Yields a temp path to write; on success it is fsynced and renamed to `path`.

  The temp file is removed if the block raises (or writes nothing), so a failure midway leaves
  the previous `path` intact and no temp file behind.
  """
  if make_dirs:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = temp_path(path)
  try:
    yield tmp
    _fsync(tmp)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically (see the module docstring)."""
  with atomic_path(path) as tmp, open(tmp, "xb") as f:
    f.write(data)


def atomic_write_text(path: str, text: str) -> None:
  """Writes UTF-8 `text` to `path` atomically."""
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, value: Any, **dumps_kwargs) -> None:
  """Serialises `value` first (a TypeError leaves no file at all), then writes it atomically.

  `dumps_kwargs` go to json.dumps (default indent=1); a trailing newline is added.
  """
  text = json.dumps(value, **{"indent": 1, **dumps_kwargs}) + "\n"
  atomic_write_text(path, text)
