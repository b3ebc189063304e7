#!/usr/bin/env bash
# Fold a trained Bone adapter (or any adapter train.py wrote) into its base model: an official-layout .pth
# that the rwkv pip package, RWKV-Runner and demo/chat.py load like any RWKV6 release.
#   bash scripts/merge_bone.sh
#   DRY_RUN=1 bash scripts/merge_bone.sh     # print the command only
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-models/RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth}   # the base the adapter was trained on
ADAPTER=${ADAPTER:-out/bone-b64-metamath/adapter-final.pth}
OUTPUT=${OUTPUT:-out/bone-b64-metamath/merged.pth}
DTYPE=${DTYPE:-keep}              # keep (as the base) | bf16 | fp16 | fp32
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

CMD=("$PYTHON" -m src.merge --base "$BASE" --adapter "$ADAPTER" --output "$OUTPUT" --dtype "$DTYPE" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "${CMD[*]}"; exit 0; fi
"${CMD[@]}"
