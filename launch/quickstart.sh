#!/usr/bin/env bash
# One command from a fresh clone to a trained model and an HTML report (the README's first command):
#
#   bash launch/quickstart.sh
#
# Phases (one progress line each): create .venv and install unity_jax; render a small synthetic
# OpenUni set (train + held-out eval split with exact ground truth); train configs/tiny.py through
# both curriculum stages on it; sample every task x modality and score them on UniBench-synth;
# write <run>/report.html (videos side by side, loss curves, metrics with baselines, config,
# fingerprint) and <run>/contact_sheet.png. About 10 minutes on 2 idle AVX-512 CPU cores (measured),
# about 20 on AVX2-only ones (derived), longer when they are shared; most of it is training
# (docs/evaluation.md).
#
# Re-running reuses what exists: the venv, complete data splits, a finished (or resumes an
# interrupted) training run. Delete the run directory to train again.
#
# Knobs (environment variables):
#   QUICKSTART_RUN=runs/quickstart      workdir of the training run
#   QUICKSTART_DATA=runs/quickstart_data  OpenUni data directory
#   QUICKSTART_TRAIN_CLIPS=512  QUICKSTART_EVAL_CLIPS=16
#   QUICKSTART_STEPS="S1 S2"            steps of the two curriculum stages (default: the config's)
#   QUICKSTART_SAMPLE_STEPS=10          ODE steps per sample in the evaluation
#   QUICKSTART_VENV=.venv  PYTHON=python3
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${QUICKSTART_RUN:-runs/quickstart}
DATA=${QUICKSTART_DATA:-runs/quickstart_data}
TRAIN_CLIPS=${QUICKSTART_TRAIN_CLIPS:-512}
EVAL_CLIPS=${QUICKSTART_EVAL_CLIPS:-16}
SAMPLE_STEPS=${QUICKSTART_SAMPLE_STEPS:-10}
VENV=${QUICKSTART_VENV:-.venv}
CONFIG=configs/tiny.py
START=$(date +%s)

phase() {
  local seconds=$(( $(date +%s) - START ))
  printf '[quickstart %d:%02d] %s\n' $((seconds / 60)) $((seconds % 60)) "$*"
}

# ---- 1. Python environment ---------------------------------------------------------------------
phase "1/5 python environment: ${VENV}"
if [ ! -x "${VENV}/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "${VENV}"
fi
PY="$(cd "${VENV}" && pwd)/bin/python"
STAMP="${VENV}/.unity_jax_quickstart_install"
# Install when this checkout's unity_jax (with its dependencies) is not importable from outside
# the checkout, or setup.py changed since our install (a venv that already has this checkout
# installed, e.g. CI's, is used as it is).
installed_here() {
  (cd / && "${PY}" -c "import os, jax, ml_collections, grain, unity_jax
assert os.path.samefile(os.path.dirname(unity_jax.__file__), '${PWD}/unity_jax')") 2>/dev/null
}
if ! installed_here || { [ -f "${STAMP}" ] && [ setup.py -nt "${STAMP}" ]; }; then
  "${PY}" -m pip install -q -e .
  touch "${STAMP}"
fi
BIN="${VENV}/bin"
# Geometry and step counts come from the config, so data and training always agree.
read -r FRAMES HEIGHT WIDTH STAGE1 STAGE2 < <("${PY}" -c "
from unity_jax import config
c = config.load_config('${CONFIG}')
print(c.data.num_frames, c.data.height, c.data.width, c.stages[0].steps, c.stages[1].steps)")
if [ -n "${QUICKSTART_STEPS:-}" ]; then
  read -r STAGE1 STAGE2 <<< "${QUICKSTART_STEPS}"
fi
TOTAL_STEPS=$((STAGE1 + STAGE2))

# ---- 2. Synthetic OpenUni data -----------------------------------------------------------------
split_records() {  # Prints the record count of split $1 in ${DATA} (0 when absent).
  "${PY}" -c "
import json, sys
try:
  m = json.load(open('${DATA}/manifest.json'))
  print(m['splits']['$1']['num_records'])
except (OSError, KeyError, ValueError):
  print(0)"
}
phase "2/5 synthetic OpenUni data: ${DATA} (${TRAIN_CLIPS} train + ${EVAL_CLIPS} eval clips," \
      "${FRAMES} frames of ${HEIGHT}x${WIDTH})"
for split in train eval; do
  clips=${TRAIN_CLIPS}; [ "${split}" = eval ] && clips=${EVAL_CLIPS}
  if [ "$(split_records "${split}")" != "${clips}" ]; then
    "${BIN}/unity-data" synth --out "${DATA}" --split "${split}" --clips "${clips}" \
        --frames "${FRAMES}" --size "${HEIGHT}" "${WIDTH}" > /dev/null
  fi
done

# ---- 3. Training -------------------------------------------------------------------------------
trained_step() {
  "${PY}" -c "
import json
try:
  print(json.load(open('${RUN}/summary.json'))['step'])
except (OSError, KeyError, ValueError):
  print(-1)"
}
phase "3/5 training ${CONFIG} on ${DATA}: stage 1 ${STAGE1} steps + stage 2 ${STAGE2} steps" \
      "-> ${RUN}"
if [ "$(trained_step)" != "${TOTAL_STEPS}" ]; then
  "${BIN}/unity-train" --config "${CONFIG}" --workdir "${RUN}" \
      --config.train.data_source=openuni --config.data.dir="${DATA}" \
      "--config.stages[0].steps=${STAGE1}" "--config.stages[1].steps=${STAGE2}" 2>&1 \
    | grep --line-buffered -v -E '^[IW][0-9]{4} ' || true
  if [ "$(trained_step)" != "${TOTAL_STEPS}" ]; then
    echo "quickstart: training did not complete (no ${RUN}/summary.json at step ${TOTAL_STEPS})" >&2
    exit 1
  fi
else
  echo "already trained (${RUN}/summary.json at step ${TOTAL_STEPS}); delete ${RUN} to retrain"
fi

# ---- 4. Sampling and evaluation ---------------------------------------------------------------
phase "4/5 sampling every task x modality and scoring on UniBench-synth (${EVAL_CLIPS} clips," \
      "${SAMPLE_STEPS} steps)"
"${BIN}/unity-eval" --workdir "${RUN}" --data "${DATA}" --clips "${EVAL_CLIPS}" \
    --steps "${SAMPLE_STEPS}" --out "${RUN}/eval/unibench_synth.json" \
    --samples "${RUN}/report_files/samples"

# ---- 5. Report ---------------------------------------------------------------------------------
phase "5/5 HTML report and contact sheet"
"${PY}" -m unity_jax.eval.html_report --eval "${RUN}/eval/unibench_synth.json" \
    --workdir "${RUN}" --out "${RUN}/report.html" > /dev/null
# One PNG a newcomer can read without a video player: per eval source, depth estimated from the
# clip beside the truth, and RGB + depth generated from the clip's caption alone.
"${PY}" -m unity_jax.eval.contact_sheet --workdir "${RUN}" --data "${DATA}" \
    --steps "${SAMPLE_STEPS}" --out "${RUN}/contact_sheet.png"
phase "done in $(( ($(date +%s) - START) / 60 )) min $(( ($(date +%s) - START) % 60 )) s;" \
      "load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "report: $(cd "$(dirname "${RUN}")" && pwd)/$(basename "${RUN}")/report.html"
echo "contact sheet: $(cd "$(dirname "${RUN}")" && pwd)/$(basename "${RUN}")/contact_sheet.png"
