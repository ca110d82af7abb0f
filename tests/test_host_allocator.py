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

# Minor page faults per call of a jitted attention gradient: ~10 buffers of up to 105 MB,
# allocated and freed by XLA:CPU's worker threads (freed before the next call).
_FAULT_PROBE = textwrap.dedent("""
    import resource, jax, jax.numpy as jnp
    def attention_sum(q, k):
      scores = jnp.einsum("bhqd,bhkd->bhqk", q, k)
      scores = jnp.where(k[..., None, :, 0] > -5, scores, -1e30)
      return jax.nn.softmax(scores, -1).sum()
    grad = jax.jit(jax.grad(attention_sum))
    q = jnp.full((4, 4, 1280, 64), 0.01)
    for _ in range(2):
      jax.block_until_ready(grad(q, q))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
      jax.block_until_ready(grad(q, q))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
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
  cpu = lambda environ: True
  tuned = host_allocator.tuned_environment({"PATH": "/bin"}, platform="linux", on_cpu=cpu)
  assert tuned == {"PATH": "/bin", "GLIBC_TUNABLES": host_allocator.TUNABLES}
  assert host_allocator.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                          platform="linux", on_cpu=cpu) is None
  for off in ("0", "false", "OFF", "no"):
    assert host_allocator.tuned_environment({host_allocator.OPT_OUT: off}, "linux", cpu) is None
  assert host_allocator.tuned_environment({host_allocator.OPT_OUT: "1"}, "linux", cpu)
  assert host_allocator.tuned_environment({}, platform="darwin", on_cpu=cpu) is None


def test_tuning_applies_only_to_cpu_runs_unless_forced():
  accelerator = lambda environ: False
  assert host_allocator.tuned_environment({}, "linux", on_cpu=accelerator) is None
  forced = host_allocator.tuned_environment({host_allocator.OPT_OUT: "1"}, "linux", accelerator)
  assert forced["GLIBC_TUNABLES"] == host_allocator.TUNABLES


@pytest.mark.parametrize("environ, installed, cpu", [
    ({"JAX_PLATFORMS": "cpu"}, {"libtpu"}, True),          # the user asks for CPU
    ({"JAX_PLATFORMS": " CPU ,tpu"}, set(), True),
    ({"JAX_PLATFORMS": "tpu"}, set(), False),
    ({"JAX_PLATFORMS": "cuda,cpu"}, set(), False),          # cuda first: jax's default backend
    ({}, set(), True),                                      # no accelerator plugin installed
    ({"JAX_PLATFORMS": ""}, set(), True),
    ({}, {"libtpu"}, False),                                # jax[tpu]
    ({}, {"jax_plugins"}, False),                           # jax[cuda12] and other PJRT plugins
])
def test_runs_on_cpu_from_environment_and_installed_plugins(environ, installed, cpu):
  assert host_allocator.runs_on_cpu(environ, installed.__contains__) is cpu


def test_runs_on_cpu_matches_this_environment_without_importing_jax():
  probe = ("import sys; from unity_jax import host_allocator; "
           "print(host_allocator.runs_on_cpu(), 'jax' in sys.modules)")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  on_cpu, imported = _run(probe, env)[0].split()
  assert imported == "False"
  import jax  # noqa: PLC0415  (compared after the probe, which must not need it)
  assert on_cpu == str(jax.default_backend() == "cpu")


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
  # The default allocator maps (and faults) ~57k pages afresh on every call. Without
  # arena_max=1 the tuned one still faulted 500-1,250 of them (the worker threads' arenas are
  # unmapped as they empty); with it ~55.
  assert default > 20000, default
  assert tuned < 0.005 * default, (tuned, default)
