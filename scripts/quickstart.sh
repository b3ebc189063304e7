#!/usr/bin/env bash
# The offline quickstart: on a CPU, no network, about 10 minutes (QUICKSTART_SIZE=ci: about 2-3 minutes).
# It makes an arithmetic word-problem task, trains a tiny byte-level RWKV6 base from scratch, fine-tunes it
# with Bone and with LoRA at equal trainable parameters, merges, scores held-out questions, chats, and plots.
#   bash scripts/quickstart.sh
#   QUICKSTART_SIZE=ci bash scripts/quickstart.sh
#   DRY_RUN=1 bash scripts/quickstart.sh         # make the task, dry-run the three trainings, stop
set -euo pipefail
cd "$(dirname "$0")/.."

QUICKSTART_SIZE=${QUICKSTART_SIZE:-full}    # full | ci
OUT_DIR=${OUT_DIR:-out/quickstart}
SEED=${SEED:-0}
THREADS=${THREADS:-2}             # CPU threads for every stage
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

EXTRA=()
if [[ "${DRY_RUN:-0}" == 1 ]]; then EXTRA+=(--dry_run); fi
"$PYTHON" demo/quickstart.py --size "$QUICKSTART_SIZE" --out_dir "$OUT_DIR" --seed "$SEED" \
  --threads "$THREADS" "${EXTRA[@]}" "$@"
