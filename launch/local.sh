#!/usr/bin/env bash
# Train on this machine (CPU, one GPU host or one TPU VM): one process, all local devices.
#
#   bash launch/local.sh [CONFIG] [WORKDIR] [--config.KEY=VALUE ...]
#   bash launch/local.sh configs/tiny.py:smoke /tmp/tiny_smoke            # < 2 min on 2 cores
#   FAKE_DEVICES=8 bash launch/local.sh configs/tiny.py:smoke /tmp/s8 --config.mesh.fsdp=2
#
# FAKE_DEVICES=N splits the CPU into N XLA devices to try a mesh layout without accelerators.
# Re-running the same command resumes from the latest checkpoint in WORKDIR; Ctrl-C (SIGINT)
# or SIGTERM finishes the current step, writes a checkpoint and exits 0.
set -euo pipefail
CONFIG="${1:-configs/tiny.py:smoke}"
WORKDIR="${2:-runs/$(basename "${CONFIG%%:*}" .py)}"
shift $(( $# < 2 ? $# : 2 ))
if [[ -n "${FAKE_DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${FAKE_DEVICES}"
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
exec ${UNITY_TRAIN:-unity-train} --config "$CONFIG" --workdir "$WORKDIR" "$@"
