#!/usr/bin/env bash
# Chat with a merged RWKV6 model (or base + adapter, merged in memory when ADAPTER is set).
#   bash scripts/chat.sh                             # interactive
#   bash scripts/chat.sh --prompt "What is 7 + 5?"   # one reply per --prompt, then exit
#   DRY_RUN=1 bash scripts/chat.sh                   # print the command only
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-out/bone-b64-metamath/merged.pth}   # with ADAPTER set: the base model instead
ADAPTER=${ADAPTER:-}
TEMPERATURE=${TEMPERATURE:-1.0}
TOP_P=${TOP_P:-0.3}
PRESENCE_PENALTY=${PRESENCE_PENALTY:-0.5}
FREQUENCY_PENALTY=${FREQUENCY_PENALTY:-0.5}
MAX_TOKENS=${MAX_TOKENS:-500}
SEED=${SEED:-42}
ENGINE=${ENGINE:-auto}            # auto | rwkv (the rwkv pip package) | native (src.model)
DEVICE=${DEVICE:-auto}            # auto | cpu | cuda
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

if [[ -n "$ADAPTER" ]]; then SOURCE=(--base "$MODEL" --adapter "$ADAPTER"); else SOURCE=(--model "$MODEL"); fi
CMD=("$PYTHON" demo/chat.py "${SOURCE[@]}" --engine "$ENGINE" --device "$DEVICE" \
  --temperature "$TEMPERATURE" --top_p "$TOP_P" \
  --presence_penalty "$PRESENCE_PENALTY" --frequency_penalty "$FREQUENCY_PENALTY" \
  --max_tokens "$MAX_TOKENS" --seed "$SEED" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "${CMD[*]}"; exit 0; fi
"${CMD[@]}"
