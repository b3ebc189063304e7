#!/usr/bin/env bash
# MATH accuracy of a fine-tuned RWKV6 (greedy decoding, MetaMath's answer extraction).
# Edit the variables below, or set them in the environment; extra arguments go to src.eval.math unchanged.
#   DRY_RUN=1 bash scripts/eval_math.sh   # print the command only
#   bash scripts/eval_math.sh
#   MODEL= BASE=models/RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth ADAPTER=out/bone-b64-metamath/adapter-final.pth \
#     bash scripts/eval_math.sh
# DATA: MATH test set as JSON Lines, {"problem", "solution"} (solutions hold a \boxed{} answer) or MetaMath's
# MATH_test.jsonl ({"instruction", "output"}).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL-out/bone-b64-metamath/merged.pth}  # merged .pth; leave empty to use BASE + ADAPTER instead
BASE=${BASE:-}                                   # base .pth the adapter was trained on
ADAPTER=${ADAPTER:-}                             # adapter file (merged in memory)
DATA=${DATA:-data/math_test.jsonl}
TEMPLATE=${TEMPLATE:-rwkv}                       # the template used at training (train.py --template)
LIMIT=${LIMIT:-}                                 # empty: all 5000 questions
OUT=${OUT:-out/eval/math_results.jsonl}
TOKENIZER=${TOKENIZER:-world}
BATCH_SIZE=${BATCH_SIZE:-64}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-2048}
WKV_OP=${WKV_OP:-auto}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

if [[ -n "$MODEL" ]]; then
  SOURCE=(--model "$MODEL")
elif [[ -n "$BASE" && -n "$ADAPTER" ]]; then
  SOURCE=(--base "$BASE" --adapter "$ADAPTER")
else
  echo "set MODEL (a merged .pth) or BASE and ADAPTER" >&2
  exit 2
fi
EXTRA=()
if [[ -n "$LIMIT" ]]; then EXTRA+=(--limit "$LIMIT"); fi

CMD=("$PYTHON" -m src.eval.math "${SOURCE[@]}" --data "$DATA" --format math --template "$TEMPLATE"
  --tokenizer "$TOKENIZER" --batch_size "$BATCH_SIZE" --max_new_tokens "$MAX_NEW_TOKENS" --wkv_op "$WKV_OP"
  --out "$OUT" "${EXTRA[@]}" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "${CMD[*]}"; exit 0; fi
"${CMD[@]}"
