#!/usr/bin/env bash
# The offline quickstart: on a CPU, no network, about 12 minutes (QUICKSTART_SIZE=ci: about 2-3 minutes).
# It makes an arithmetic word-problem task, trains a tiny byte-level RWKV6 base from scratch, fine-tunes it
# with Bone and with LoRA at equal trainable parameters, merges, scores held-out questions, chats, and plots.
#   bash scripts/quickstart.sh
#   QUICKSTART_SIZE=ci bash scripts/quickstart.sh
#   DRY_RUN=1 bash scripts/quickstart.sh         # make the task, dry-run the three trainings, stop
#   FRESH=1 bash scripts/quickstart.sh           # redo every stage (otherwise finished stages are reused)
#   QUICKSTART_ARCH=x070 bash scripts/quickstart.sh   # the same story on a tiny RWKV-7 (in out/quickstart-x070)
set -euo pipefail
cd "$(dirname "$0")/.."

QUICKSTART_SIZE=${QUICKSTART_SIZE:-full}    # full | ci
QUICKSTART_ARCH=${QUICKSTART_ARCH:-x060}    # x060 (RWKV6) | x070 (RWKV-7)
if [[ "$QUICKSTART_ARCH" == x060 ]]; then OUT_DIR=${OUT_DIR:-out/quickstart}; else OUT_DIR=${OUT_DIR:-out/quickstart-$QUICKSTART_ARCH}; fi
SEED=${SEED:-0}
THREADS=${THREADS:-2}             # CPU threads for every stage

if [[ -z "${PYTHON:-}" ]]; then
  bash scripts/setup_venv.sh   # a fresh clone gets its .venv first (about 2 minutes, once)
  PYTHON=.venv/bin/python
fi

EXTRA=()
if [[ "${DRY_RUN:-0}" == 1 ]]; then EXTRA+=(--dry_run); fi
if [[ "${FRESH:-0}" == 1 ]]; then EXTRA+=(--fresh); fi
"$PYTHON" demo/quickstart.py --size "$QUICKSTART_SIZE" --arch "$QUICKSTART_ARCH" --out_dir "$OUT_DIR" \
  --seed "$SEED" --threads "$THREADS" "${EXTRA[@]}" "$@"
