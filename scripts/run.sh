#!/usr/bin/env bash
# Fine-tune an RWKV6 checkpoint on MetaMathQA with the paper's setting:
#   train.py --config configs/rwkv6-<SIZE>.yaml --peft METHOD --load_model ... --data_file ... --proj_dir ...
# Every training setting (b=64 / r=32, lr, batch, ctx, epochs, precision, ...) lives in that config; this script
# adds the run's paths and, only when DEVICES or MICRO_BSZ is set, the accumulate_grad_batches and epoch_steps
# that keep the config's global batch (64) and optimizer-step count on that many devices.
# scripts/run_bone.sh, run_lora.sh and run_pissa.sh call it; extra arguments go to train.py unchanged (and win).
#   bash scripts/run.sh bone|lora|pissa [train.py flags...]
#   bash scripts/run_bone.sh                               # 1.6B, the config's 1 GPU x accumulate 8
#   DEVICES=4 bash scripts/run_bone.sh                     # the paper's 4 GPUs: accumulate 2, same steps
#   SIZE=3b LOAD_MODEL=models/RWKV-x060-World-3B-v2.1-<date>-ctx4096.pth bash scripts/run_lora.sh
#   DRY_RUN=1 bash scripts/run_bone.sh                     # train.py --dry_run: adapter table, trainable count
#   LOAD_MODEL= DRY_RUN=1 bash scripts/run_bone.sh         # the same from the config's shape keys (no .pth)
# The train.py command is printed to stderr before it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

METHOD=${1:-}
case "$METHOD" in
  bone|lora|pissa) shift ;;
  *) echo "usage: bash scripts/run.sh bone|lora|pissa [train.py flags...] (got '${METHOD}')" >&2; exit 2 ;;
esac

SIZE=${SIZE:-1b6}                               # 1b6 | 3b | 7b: picks configs/rwkv6-$SIZE.yaml
CONFIG=${CONFIG:-configs/rwkv6-$SIZE.yaml}      # or any train.py YAML
if [[ "$CONFIG" == configs/rwkv6-1b6.yaml ]]; then default_model=models/RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth
else default_model=; fi
LOAD_MODEL=${LOAD_MODEL-$default_model}         # a real RWKV6 .pth of the config's shape; empty: none (dry runs)
DATA_FILE=${DATA_FILE:-data/MetaMathQA-395K.json}   # {"query", "response"} records (JSON array or JSON Lines)
PROJ_DIR=${PROJ_DIR:-}                          # empty: out/bone-b64-metamath, out/lora-r32-metamath, ... (+ -SIZE)
DEVICES=${DEVICES:-}                            # empty: the config's; set: GPUs, accumulation follows
MICRO_BSZ=${MICRO_BSZ:-}                        # empty: the config's; set: samples per device, accumulation follows
BONE_B=${BONE_B:-}                              # bone: block size (empty: the config's)
LORA_R=${LORA_R:-}                              # lora, pissa: rank (empty: the config's)
DRY_RUN=${DRY_RUN:-0}                           # 1: train.py --dry_run
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

for arg in "$@"; do
  case "$arg" in
    --config|--config=*) echo "set CONFIG=FILE (or SIZE) instead of passing $arg" >&2; exit 2 ;;
  esac
done
if [[ ! -f "$CONFIG" ]]; then
  echo "CONFIG=$CONFIG not found (SIZE is one of 1b6, 3b, 7b, or set CONFIG to a train.py YAML)" >&2
  exit 2
fi
# The config's values, as train.py itself resolves them (defaults and checks included).
cfg_values=$("$PYTHON" -c 'import sys
from src.train.args import parse_args
try:
    c = parse_args(["--config", sys.argv[1]])
except (ValueError, FileNotFoundError) as error:
    sys.exit(f"{sys.argv[1]}: {error}")
print(c.micro_bsz, c.accumulate_grad_batches, c.devices, c.num_nodes, c.epoch_steps, c.bone_b, c.lora_r)' "$CONFIG")
read -r cfg_micro cfg_accumulate cfg_devices cfg_nodes cfg_epoch_steps cfg_bone_b cfg_lora_r <<<"$cfg_values"

CMD=("$PYTHON" train.py --config "$CONFIG" --peft "$METHOD")
if [[ -n "$LOAD_MODEL" ]]; then CMD+=(--load_model "$LOAD_MODEL"); fi
if [[ "$METHOD" == bone ]]; then
  tag=b${BONE_B:-$cfg_bone_b}
  if [[ -n "$BONE_B" ]]; then CMD+=(--bone_b "$BONE_B"); fi
else
  tag=r${LORA_R:-$cfg_lora_r}
  if [[ -n "$LORA_R" ]]; then CMD+=(--lora_r "$LORA_R"); fi
fi
if [[ -z "$PROJ_DIR" ]]; then
  stem=$(basename "$CONFIG" .yaml); stem=${stem#rwkv6-}
  PROJ_DIR=out/$METHOD-$tag-metamath$([[ "$stem" == 1b6 ]] || echo "-$stem")
fi
CMD+=(--data_file "$DATA_FILE" --proj_dir "$PROJ_DIR")

# Global batch = micro_bsz x accumulate x devices x nodes, and optimizer steps per epoch = epoch_steps /
# accumulate (epoch_steps counts micro-batches per device): both are kept at the config's values.
if [[ -n "$DEVICES$MICRO_BSZ" ]]; then
  for arg in "$@"; do
    case "$arg" in
      --devices|--devices=*|--micro_bsz|--micro_bsz=*|--accumulate_grad_batches|--accumulate_grad_batches=*|\
      --epoch_steps|--epoch_steps=*|--num_nodes|--num_nodes=*)
        echo "$arg given with DEVICES/MICRO_BSZ set: use one or the other (the script derives the batch flags)" >&2
        exit 2 ;;
    esac
  done
  devices=${DEVICES:-$cfg_devices}
  micro=${MICRO_BSZ:-$cfg_micro}
  if [[ ! "$devices" =~ ^[1-9][0-9]*$ || ! "$micro" =~ ^[1-9][0-9]*$ ]]; then
    echo "DEVICES and MICRO_BSZ must be positive integers (got '$DEVICES', '$MICRO_BSZ')" >&2
    exit 2
  fi
  global_batch=$(( cfg_micro * cfg_accumulate * cfg_devices * cfg_nodes ))
  steps_per_epoch=$(( cfg_epoch_steps / cfg_accumulate ))
  per_step=$(( micro * devices * cfg_nodes ))
  if (( global_batch % per_step != 0 )); then
    echo "global batch $global_batch ($CONFIG) is not a multiple of MICRO_BSZ $micro x DEVICES $devices" \
      "x num_nodes $cfg_nodes = $per_step: choose values whose product divides $global_batch" >&2
    exit 2
  fi
  accumulate=$(( global_batch / per_step ))
  CMD+=(--devices "$devices" --micro_bsz "$micro" --accumulate_grad_batches "$accumulate"
        --epoch_steps $(( steps_per_epoch * accumulate )))
fi
if [[ "$DRY_RUN" == 1 ]]; then CMD+=(--dry_run); fi
CMD+=("$@")

printf '+' >&2; printf ' %q' "${CMD[@]}" >&2; printf '\n' >&2
exec "${CMD[@]}"
