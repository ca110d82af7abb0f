"""The unity-* commands re-execute once with the tuned glibc malloc, and it removes page faults."""

import os
import subprocess
import sys
import textwrap

import pytest

from unity_jax import host_allocator

_REEXEC_PROBE = textwrap.dedent("""
    import os
    from unity_jax import host_allocator
    print("start", os.getpid(), flush=True)
    host_allocator.maybe_reexec()
    print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"))
""")

# Minor page faults per call of a jitted op with a 42 MB result (freed before the next call).
_FAULT_PROBE = textwrap.dedent("""
    import resource, jax, jax.numpy as jnp
    f = jax.jit(lambda y: y * 2.0 + 1.0)
    y = jnp.ones((4, 2560, 1024))
    for _ in range(3):
      jax.block_until_ready(f(y))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
      jax.block_until_ready(f(y))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", host_allocator.OPT_OUT)}
  return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _run(code, env):
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=True)
  return result.stdout.split("\n")


def test_tuned_environment_respects_user_settings_and_opt_out():
  tuned = host_allocator.tuned_environment({"PATH": "/bin"}, platform="linux")
  assert tuned == {"PATH": "/bin", "GLIBC_TUNABLES": host_allocator.TUNABLES}
  assert host_allocator.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                          platform="linux") is None
  for off in ("0", "false", "OFF", "no"):
    assert host_allocator.tuned_environment({host_allocator.OPT_OUT: off}, "linux") is None
  assert host_allocator.tuned_environment({host_allocator.OPT_OUT: "1"}, "linux") is not None
  assert host_allocator.tuned_environment({}, platform="darwin") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
def test_reexec_happens_once_in_the_same_process():
  lines = _run(_REEXEC_PROBE, _clean_env())
  pid = lines[0].split()[1]
  assert lines[:3] == [f"start {pid}", f"start {pid}", f"after {pid} {host_allocator.TUNABLES}"]
  opted_out = _run(_REEXEC_PROBE, _clean_env(**{host_allocator.OPT_OUT: "0"}))
  assert opted_out[:2] == [f"start {opted_out[0].split()[1]}",
                           f"after {opted_out[0].split()[1]} None"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
def test_tuned_allocator_removes_page_faults_of_large_buffers():
  default = float(_run(_FAULT_PROBE, _clean_env())[0])
  tuned = float(_run(_FAULT_PROBE, _clean_env(GLIBC_TUNABLES=host_allocator.TUNABLES))[0])
  # 42 MB = 10,240 pages: the default allocator maps (and faults) them afresh on every call.
  assert default > 5000, default
  assert tuned < 0.25 * default, (tuned, default)
