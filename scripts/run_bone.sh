#!/usr/bin/env bash
# Bone (b=64) fine-tuning of RWKV6 on MetaMathQA, the paper's RWKV6 setting from configs/rwkv6-<SIZE>.yaml.
# Variables (LOAD_MODEL, DATA_FILE, PROJ_DIR, SIZE or CONFIG, DEVICES, MICRO_BSZ, BONE_B, DRY_RUN, PYTHON) and
# examples: scripts/run.sh. Extra arguments go to train.py unchanged.
#   bash scripts/run_bone.sh
#   DEVICES=4 bash scripts/run_bone.sh      # 4 GPUs, still 64 samples per optimizer step
#   DRY_RUN=1 bash scripts/run_bone.sh      # print the adapter table and trainable count, stop
exec bash "$(dirname "$0")/run.sh" bone "$@"
