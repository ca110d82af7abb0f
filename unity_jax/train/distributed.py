"""Multi-host start-up: `jax.distributed.initialize` when configured or detected.

train.distributed:
  "off"  single process, never initialise;
  "on"   always call jax.distributed.initialize() (JAX detects TPU pods, SLURM, Open MPI, k8s);
  "auto" initialise when the environment describes a multi-process job:
         JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID; used by
         launch/multiprocess_cpu.sh), or a SLURM / Open MPI job with more than one task, or a
         multi-host Cloud TPU slice (TPU_WORKER_HOSTNAMES lists several hosts).
Must run before anything touches jax devices.
"""

import os

import jax

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def detected_multiprocess_env(environ=os.environ) -> bool:
  """True when the environment variables describe a job of more than one process."""
  if environ.get(ENV_ADDRESS):
    return True
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(environ.get(name, "1") or 1) > 1:
      return True
  return len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def maybe_initialize(mode: str, *, timeout_seconds: int = 300) -> bool:
  """Initialises jax.distributed per `mode` (see the module docstring); True if it did."""
  if mode == "off" or (mode == "auto" and not detected_multiprocess_env()):
    return False
  kwargs = {}
  if os.environ.get(ENV_ADDRESS):
    kwargs["coordinator_address"] = os.environ[ENV_ADDRESS]
    if os.environ.get(ENV_COUNT):
      kwargs["num_processes"] = int(os.environ[ENV_COUNT])
    if os.environ.get(ENV_ID):
      kwargs["process_id"] = int(os.environ[ENV_ID])
  jax.distributed.initialize(initialization_timeout=timeout_seconds, **kwargs)
  return True
