"""Host memory allocator settings for the command-line entry points (Linux / glibc).

XLA:CPU allocates its buffers afresh on every call of an executable (several GB of temporaries
for one `small` train step), from whichever of its worker threads runs the op. With glibc's
defaults every step then first-touches its memory again:
- blocks above the mmap threshold get a fresh `mmap` and go back with `munmap`;
- worker threads allocate from their own arenas, whose heaps are separate mmap'd regions that
  glibc unmaps as soon as they empty.
`benchmarks/train_step.py`'s small step took 4 GB of minor page faults and ~3.5 s of kernel
time per step on 2 cores. The tunables below keep freed memory in one heap (no `mmap` for large
blocks, no trimming, a single arena) backed by transparent huge pages. Minor faults counted with
getrusage on a 2-core EPYC, two alternating runs per setting, 3 timed steps each:
- without the single arena, small still faulted 150k-300k pages per step (9.8-11.1 s);
- with it, 0 faults and 7.8-9.2 s per step (tiny: 0.63-0.70 s against 0.63-0.88 s).

glibc reads GLIBC_TUNABLES only when the process starts, so `maybe_reexec` replaces the process
(same PID, same arguments) once, before anything heavy is imported. That is before jax is
imported, so the backend is judged without it (`runs_on_cpu`): the tuning applies when
JAX_PLATFORMS names cpu first, or when it is unset and no accelerator plugin is installed (no
`libtpu`, no `jax_plugins` package: jax[tpu] and jax[cuda12] install those). On TPU or GPU hosts
the large buffers live on the device and the host keeps glibc's defaults. Set
UNITY_JAX_MALLOC_TUNING=0 to keep the default allocator, =1 to tune it on any backend; a
GLIBC_TUNABLES you set yourself is left as it is.
"""

import importlib.util
import os
import sys
from typing import Callable, Mapping

TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:"
            "glibc.malloc.trim_threshold=68719476736:glibc.malloc.arena_max=1")
"""Huge pages for malloc'd memory; no mmap for large blocks; never give the heap back; one
arena for all threads (per-thread arenas are unmapped when they empty)."""
OPT_OUT = "UNITY_JAX_MALLOC_TUNING"


ACCELERATOR_MODULES = ("libtpu", "jax_plugins")
"""Installed by jax[tpu] (libtpu) and by the PJRT plugins of jax[cuda12], ROCm, Metal
(namespace package jax_plugins)."""


def _installed(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def runs_on_cpu(environ: Mapping[str, str] = os.environ,
                installed: Callable[[str], bool] = _installed) -> bool:
  """Whether jax will run this process on CPU, decided without importing jax.

  JAX_PLATFORMS, when set, is the list jax tries in order: CPU if "cpu" comes first. Unset, jax
  picks an accelerator when a plugin for one is installed, so CPU when none is.
  """
  platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",")]
  if platforms[0]:
    return platforms[0] == "cpu"
  return not any(installed(module) for module in ACCELERATOR_MODULES)


def tuned_environment(environ: Mapping[str, str], platform: str = sys.platform,
                      on_cpu: Callable[[Mapping[str, str]], bool] = runs_on_cpu) -> dict | None:
  """The environment to re-execute with, or None when nothing should change.

  Nothing changes off Linux, when GLIBC_TUNABLES is already set (by the user, or by an earlier
  re-exec), when UNITY_JAX_MALLOC_TUNING is 0/false/off/no, or when jax will not run on CPU
  (`on_cpu`) and UNITY_JAX_MALLOC_TUNING is not set to force it.
  """
  if not platform.startswith("linux") or "GLIBC_TUNABLES" in environ:
    return None
  choice = environ.get(OPT_OUT, "").strip().lower()
  if choice in ("0", "false", "off", "no"):
    return None
  if not choice and not on_cpu(environ):
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
