#!/usr/bin/env bash
# Launch unity-train on every host of a Cloud TPU VM slice (multi-host JAX).
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a PROJECT=my-proj \
#   WORKDIR=/mnt/shared/runs/unity_5b CONFIG=configs/unity_5b.py \
#   bash launch/tpu_pod.sh [--config.train.batch_size=64 ...]
#
# Every host runs the same command; jax.distributed.initialize() detects the slice
# (train.distributed="auto"), each host reads its own shard of the OpenUni data
# (process_index::process_count) and all hosts take part in orbax checkpointing. WORKDIR and
# config.data.dir must be on storage every host sees (a shared filesystem or a gcsfuse mount).
# Re-running the same command resumes from the latest checkpoint.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
CONFIG="${CONFIG:-configs/unity_5b.py}"
REPO_DIR="${REPO_DIR:-~/unity_jax}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
EXTRA_ARGS=$(printf ' %q' "$@")

setup="cd $REPO_DIR && (test -d .venv || python3 -m venv .venv) && \
.venv/bin/pip install -q -e '.[tpu]'"
train="cd $REPO_DIR && .venv/bin/unity-train --config $CONFIG --workdir $WORKDIR$EXTRA_ARGS"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
  --command="$setup && $train"
