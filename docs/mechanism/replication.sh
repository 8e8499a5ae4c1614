#!/usr/bin/env bash
# Every sweep of docs/mechanism.md's replication, in order, into fixed directories, so that
# running it again resumes: a finished job is read back from its last.ckpt, an interrupted
# one continues from it.
#   docs/mechanism/replication.sh /path/to/tinyshakespeare.txt [OUT]    # OUT: outputs/sweeps/replication
# Then: python docs/mechanism/mechanism_study.py collect OUT OUT_extra   (the per-run CSVs), and
#       python docs/mechanism/mechanism_study.py   (every table and the figure of docs/mechanism.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
TEXT=$(realpath "${1:?usage: replication.sh TINYSHAKESPEARE_TXT [OUT]}")
OUT=${2:-outputs/sweeps/replication}
PY=${PYTHON:-python}
OTHERS=v_bias,ca_bias,sigmoid,gated,clipped_softmax,softpick,scalable_softmax
NOBOS=softmax,attn_bias,softmax1,sink,explicit_scale,sigmoid

sweep() {  # NAME OVERRIDES...: one sweep, timed, into OUT/NAME
  local name=$1; shift
  echo "== $name: $* ($(date -u +%FT%TZ))"
  local start=$SECONDS
  $PY train.py -m "$@" hydra.sweep.dir="$OUT/$name" || echo "== $name: some jobs failed (see above)"
  echo "== $name: $((SECONDS - start)) s"
}

# 1. The bistable variants and softmax, 10 seeds, on both texts.
sweep stdlib +experiment=sink_replication
sweep shakespeare +experiment=sink_replication data.source="$TEXT"
# 2. The other variants, 3 seeds, on both texts (differential pairs its heads: n_head=2).
sweep others_stdlib +experiment=sink_mechanism attention=$OTHERS seed=0,1,2
sweep others_shakespeare +experiment=sink_mechanism attention=$OTHERS seed=0,1,2 data.source="$TEXT"
sweep differential_stdlib +experiment=sink_mechanism attention=differential model.n_head=2 seed=0,1,2
sweep differential_shakespeare +experiment=sink_mechanism attention=differential model.n_head=2 seed=0,1,2 data.source="$TEXT"
# 3. Without a BOS token, 3 seeds, on both texts.
sweep nobos_stdlib +experiment=sink_mechanism attention=$NOBOS seed=0,1,2 data.bos=false
sweep nobos_shakespeare +experiment=sink_mechanism attention=$NOBOS seed=0,1,2 data.bos=false data.source="$TEXT"
# 4. The SGD learning-rate search of the optimizer study (softmax, seed 0), into OUT_extra.
OUT=${OUT}_extra sweep sgd_lr +experiment=sink_optimizers attention=softmax seed=0 optim=sgd \
    optim.lr=0.03,0.1,0.3,1.0 optim.min_lr=0.003
