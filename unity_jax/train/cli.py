"""unity-train: train a UnityVideo model from a config.

  unity-train --config configs/tiny.py:smoke --workdir /tmp/tiny_smoke
  unity-train --config configs/tiny.py --workdir runs/tiny --config.train.lr=1e-4 \
      --config.mesh.fsdp=2

Re-running the same command with the same workdir resumes from the latest checkpoint.
Exit status: 0 when finished or stopped by SIGTERM/SIGINT (after writing a checkpoint);
2 for an invalid config; 3 when the non-finite policy stopped the run.
Multi-process (one process per host): set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (launch/multiprocess_cpu.sh), or run under a detected cluster (TPU pod, SLURM).
"""

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from unity_jax import host_allocator

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and args: configs/NAME.py[:ARGS].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, summary).")
_JAX_CACHE_DIR = flags.DEFINE_string(
    "jax_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "unity_jax", "jax"),
    "Persistent XLA compilation cache ('' disables): a re-run skips recompiling.")
flags.mark_flags_as_required(["config", "workdir"])


def _configure_jax(cache_dir: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if cache_dir and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  # Orbax and absl log every save at INFO; the trainer reports checkpoints itself.
  logging.getLogger("absl").setLevel(logging.WARNING)


def _main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  # Imports after flag parsing keep `unity-train --help` fast.
  from unity_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from unity_jax.train import distributed  # pylint: disable=g-import-not-at-top
  from unity_jax.train import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    print(f"unity-train: invalid config: {e}", file=sys.stderr)
    return 2
  distributed.maybe_initialize(config.train.distributed)
  _configure_jax(_JAX_CACHE_DIR.value)
  try:
    result = trainer_lib.train(config, _WORKDIR.value)
  except config_lib.ConfigError as e:
    print(f"unity-train: invalid config: {e}", file=sys.stderr)
    return 2
  except trainer_lib.NonFiniteError as e:
    print(f"unity-train: {e}", file=sys.stderr)
    return trainer_lib.EXIT_NONFINITE
  del result
  return 0


def main():
  host_allocator.maybe_reexec()
  app.run(_main)


if __name__ == "__main__":
  main()
