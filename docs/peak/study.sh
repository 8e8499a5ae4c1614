#!/usr/bin/env bash
# docs/peak.md's study: seven arms of +experiment=residual_peak (six attention variants under
# AdamW, and softmax under SGD), seeds 0-2 on the stdlib, then seed 3 on a second text. Each
# job has a fixed directory, OUT/SWEEP/ARM_sSEED, so running this again resumes: a finished
# job is read back from its last.ckpt, an interrupted one continues from it. Jobs run single-
# threaded (the preset's torch_threads: 1), JOBS at a time (default 2, one per core).
#   docs/peak/study.sh /path/to/tinyshakespeare.txt [OUT]    # OUT: outputs/sweeps/peak
# Then: python docs/peak/peak_study.py collect OUT   (the per-run CSV and curves), and
#       python docs/peak/peak_study.py           (the tables and the figure of docs/peak.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
TEXT=$(realpath "${1:?usage: study.sh TINYSHAKESPEARE_TXT [OUT]}")
OUT=${2:-outputs/sweeps/peak}
PY=${PYTHON:-python}
ADAMW="softmax explicit_scale attn_bias gated sigmoid relu"
# Guo et al.'s SGD run: lr 0.03, momentum 0.9 (configs/optim/sgd.yaml), constant; SGD has no betas
SGD="attention=softmax optim=sgd optim.lr=0.03 optim.min_lr=0.03 ~optim.optimizer.betas"

arm_jobs() {  # SWEEP SEED [OVERRIDES...]: one line per arm, "DIR OVERRIDES..."
  local sweep=$1 seed=$2; shift 2
  for arm in $ADAMW; do echo "$OUT/$sweep/${arm}_s$seed attention=$arm seed=$seed${*:+ $*}"; done
  echo "$OUT/$sweep/softmax_sgd_s$seed $SGD seed=$seed${*:+ $*}"
}

run() {  # DIR OVERRIDES...: one job, its console output in DIR.log
  local dir=$1; shift
  mkdir -p "$(dirname "$dir")"
  local start=$SECONDS
  if $PY train.py +experiment=residual_peak "$@" hydra.run.dir="$dir" > "$dir.log" 2>&1; then
    echo "$(date -u +%T) done   $dir ($((SECONDS - start)) s)"
  else
    echo "$(date -u +%T) FAILED $dir (see $dir.log)"
  fi
}
export -f run; export PY

echo "== study into $OUT, $(date -u +%FT%TZ)"
start=$SECONDS
{ for seed in 0 1 2; do arm_jobs stdlib $seed; done; arm_jobs shakespeare 3 data.source="$TEXT"; } \
  | xargs -P "${JOBS:-2}" -L 1 bash -c 'run "$@"' _
echo "== study: $((SECONDS - start)) s"
