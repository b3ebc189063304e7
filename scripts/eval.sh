#!/usr/bin/env bash
# GSM8K or MATH accuracy of a fine-tuned RWKV6 (greedy decoding, MetaMath's answer extraction): src.eval.math.
# Edit the variables below, or set them in the environment; extra arguments go to src.eval.math unchanged.
#   DRY_RUN=1 bash scripts/eval.sh                 # print the command only
#   bash scripts/eval.sh                           # GSM8K
#   FORMAT=math bash scripts/eval.sh               # MATH
#   MODEL= BASE=models/RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth ADAPTER=out/bone-b64-metamath/adapter-final.pth \
#     FORMAT=math bash scripts/eval.sh
# DATA, as JSON Lines: gsm8k: GSM8K's test set, {"question", "answer"} (answers end with "#### N"), or MetaMath's
# GSM8K_test.jsonl ({"query", "response"}); math: MATH's test set, {"problem", "solution"} (solutions hold a
# \boxed{} answer), or MetaMath's MATH_test.jsonl ({"instruction", "output"}).
set -euo pipefail
cd "$(dirname "$0")/.."

FORMAT=${FORMAT:-gsm8k}                          # gsm8k (1319 test questions) | math (5000)
case "$FORMAT" in
  gsm8k|math) ;;
  *) echo "FORMAT must be gsm8k or math, got '$FORMAT'" >&2; exit 2 ;;
esac
MODEL=${MODEL-out/bone-b64-metamath/merged.pth}  # merged .pth; leave empty to use BASE + ADAPTER instead
BASE=${BASE:-}                                   # base .pth the adapter was trained on
ADAPTER=${ADAPTER:-}                             # adapter file (merged in memory)
DATA=${DATA:-data/${FORMAT}_test.jsonl}
TEMPLATE=${TEMPLATE:-rwkv}                       # the template used at training (train.py --template)
LIMIT=${LIMIT:-}                                 # empty: every question
OUT=${OUT:-out/eval/${FORMAT}_results.jsonl}
TOKENIZER=${TOKENIZER:-world}
BATCH_SIZE=${BATCH_SIZE:-64}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-}               # empty: src.eval.math's limit per FORMAT (MetaMath's 512 / 2048)
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
if [[ -n "$MAX_NEW_TOKENS" ]]; then EXTRA+=(--max_new_tokens "$MAX_NEW_TOKENS"); fi

CMD=("$PYTHON" -m src.eval.math "${SOURCE[@]}" --data "$DATA" --format "$FORMAT" --template "$TEMPLATE"
  --tokenizer "$TOKENIZER" --batch_size "$BATCH_SIZE" --wkv_op "$WKV_OP" --out "$OUT" "${EXTRA[@]}" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "${CMD[*]}"; exit 0; fi
"${CMD[@]}"
