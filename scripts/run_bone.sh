#!/usr/bin/env bash
# Bone fine-tuning of an RWKV6 checkpoint on MetaMathQA: the paper's RWKV6 setting.
#   b=64, lr 2e-5 constant, bf16, ctx 512, global batch 64 = MICRO_BSZ x accumulation x DEVICES.
# Edit the variables below, or set them in the environment; extra arguments go to train.py unchanged.
#   bash scripts/run_bone.sh
#   DRY_RUN=1 bash scripts/run_bone.sh     # load shapes and data, print the plan and trainable count, stop
set -euo pipefail
cd "$(dirname "$0")/.."

LOAD_MODEL=${LOAD_MODEL:-models/RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth}  # a real RWKV6 .pth
DATA_FILE=${DATA_FILE:-data/MetaMathQA-395K.json}   # {"query", "response"} records (JSON array or JSON Lines)
PROJ_DIR=${PROJ_DIR:-out/bone-b64-metamath}
N_LAYER=${N_LAYER:-24}            # 1.6B: 24/2048, 3B: 32/2560, 7B: 32/4096 (checked against the checkpoint)
N_EMBD=${N_EMBD:-2048}
VOCAB_SIZE=${VOCAB_SIZE:-65536}
CTX_LEN=${CTX_LEN:-512}
BONE_B=${BONE_B:-64}
GLOBAL_BATCH=${GLOBAL_BATCH:-64}
MICRO_BSZ=${MICRO_BSZ:-8}
DEVICES=${DEVICES:-4}
LR=${LR:-2e-5}                    # lr_init = lr_final: constant
EPOCH_STEPS=${EPOCH_STEPS:-1000}
EPOCH_COUNT=${EPOCH_COUNT:-7}
EPOCH_SAVE=${EPOCH_SAVE:-1}
STRATEGY=${STRATEGY:-deepspeed_stage_2}
ACCELERATOR=${ACCELERATOR:-gpu}
PRECISION=${PRECISION:-bf16}
GRAD_CP=${GRAD_CP:-1}
SEED=${SEED:-42}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

if (( GLOBAL_BATCH % (MICRO_BSZ * DEVICES) != 0 )); then
  echo "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of MICRO_BSZ x DEVICES = $((MICRO_BSZ * DEVICES))" >&2
  exit 2
fi
ACCUMULATE=$(( GLOBAL_BATCH / (MICRO_BSZ * DEVICES) ))
EXTRA=()
if [[ "${DRY_RUN:-0}" == 1 ]]; then EXTRA+=(--dry_run); fi

set -x
"$PYTHON" train.py --peft bone --bone_b "$BONE_B" \
  --load_model "$LOAD_MODEL" --proj_dir "$PROJ_DIR" \
  --data_file "$DATA_FILE" --data_type sft --vocab_size "$VOCAB_SIZE" \
  --n_layer "$N_LAYER" --n_embd "$N_EMBD" --ctx_len "$CTX_LEN" \
  --micro_bsz "$MICRO_BSZ" --accumulate_grad_batches "$ACCUMULATE" \
  --epoch_steps "$EPOCH_STEPS" --epoch_count "$EPOCH_COUNT" --epoch_save "$EPOCH_SAVE" \
  --lr_init "$LR" --lr_final "$LR" --warmup_steps 0 \
  --strategy "$STRATEGY" --accelerator "$ACCELERATOR" --devices "$DEVICES" --precision "$PRECISION" \
  --grad_cp "$GRAD_CP" --seed "$SEED" \
  "${EXTRA[@]}" "$@"
