"""Host memory allocator settings for the command-line entry points (Linux / glibc).

XLA:CPU allocates each executable's temporary buffer afresh on every call (3.5 GB for one
`small` train step). glibc serves blocks that large with a new `mmap` and returns them with
`munmap`, so every step first-touches ~1M pages: `benchmarks/train_step.py`'s small step took
4 GB of minor page faults and ~3.5 s of kernel time per step (2 cores). With the tunables
below glibc keeps freed memory in its heap (no `mmap` for large blocks, no trimming) and backs
it with transparent huge pages; the same step then faults 0.01 GB and the tiny and small steps
get ~10% faster, at the same peak RSS (1.86 vs 1.94 GB for tiny).

glibc reads GLIBC_TUNABLES only when the process starts, so `maybe_reexec` replaces the process
(same PID, same arguments) once, before anything heavy is imported. Set
UNITY_JAX_MALLOC_TUNING=0 to keep the default allocator; a GLIBC_TUNABLES you set yourself is
left as it is.
"""

import os
import sys
from typing import Mapping

TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:"
            "glibc.malloc.trim_threshold=68719476736")
"""Huge pages for malloc'd memory; no mmap for large blocks; never give the heap back."""
OPT_OUT = "UNITY_JAX_MALLOC_TUNING"


def tuned_environment(environ: Mapping[str, str], platform: str = sys.platform) -> dict | None:
  """The environment to re-execute with, or None when nothing should change.

  Nothing changes off Linux, when GLIBC_TUNABLES is already set (by the user, or by an earlier
  re-exec), or when UNITY_JAX_MALLOC_TUNING is 0/false/off.
  """
  if not platform.startswith("linux") or "GLIBC_TUNABLES" in environ:
    return None
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "off", "no"):
    return None
  return {**environ, "GLIBC_TUNABLES": TUNABLES}


def maybe_reexec() -> None:
  """Re-executes this process with `TUNABLES` once (see module doc); returns if not needed.

  Call it first thing in a console-script `main` (never from library code or tests): the
  process image is replaced, so nothing done before the call survives.
  """
  environ = tuned_environment(os.environ)
  if environ is None or not sys.executable:
    return
  argv = [sys.executable, *sys.orig_argv[1:]]
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, environ)


def describe(environ: Mapping[str, str] = os.environ) -> str:
  """One line for logs: which allocator settings this process runs with."""
  tunables = environ.get("GLIBC_TUNABLES")
  if tunables == TUNABLES:
    return "glibc malloc tuned (huge pages, heap kept; UNITY_JAX_MALLOC_TUNING=0 disables)"
  return f"GLIBC_TUNABLES={tunables}" if tunables else "default glibc malloc"
