#!/usr/bin/env bash
# Simulate a multi-host job on one machine: N processes x D fake CPU devices, coordinated by
# jax.distributed over 127.0.0.1 (gloo collectives).
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 bash launch/multiprocess_cpu.sh \
#       configs/tiny.py:smoke /tmp/mp_smoke [--config.KEY=VALUE ...]
#
# Every process runs the same unity-train command with JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID set (train.distributed="auto" picks them up). Process 0
# prints to this terminal and writes the workdir's logs; process i>0 logs to
# WORKDIR/process<i>.log. All processes write the checkpoint together. SIGINT/SIGTERM to this
# script is forwarded to every process (they finish the step, checkpoint and exit 0).
# The same command with NUM_PROCESSES=1 DEVICES_PER_PROCESS=4 gives the identical
# summary.json fingerprint (both use gloo collectives; see tests/test_train_cli.py).
set -euo pipefail
CONFIG="${1:?usage: launch/multiprocess_cpu.sh CONFIG WORKDIR [overrides...]}"
WORKDIR="${2:?usage: launch/multiprocess_cpu.sh CONFIG WORKDIR [overrides...]}"
shift 2
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-2}"
PYTHON="${PYTHON:-python}"
free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
PORT="${PORT:-$("$PYTHON" -c "$free_port")}"
mkdir -p "$WORKDIR"

pids=()
forward() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; }
trap forward INT TERM
for ((i = 0; i < NUM_PROCESSES; i++)); do
  log="$WORKDIR/process$i.log"
  [[ $i -eq 0 ]] && log=/dev/stderr
  XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS" JAX_PLATFORMS=cpu \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$NUM_PROCESSES" \
  JAX_PROCESS_ID="$i" \
    ${UNITY_TRAIN:-unity-train} --config "$CONFIG" --workdir "$WORKDIR" "$@" >"$log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid" && rc=0 || rc=$?
    kill -0 "$pid" 2>/dev/null || break   # still running: wait was interrupted by a signal
  done
  [[ $rc -ne 0 && $status -eq 0 ]] && status=$rc
done
exit "$status"
