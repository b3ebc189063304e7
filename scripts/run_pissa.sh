#!/usr/bin/env bash
# PiSSA (LoRA r=32 initialised from the principal singular vectors) fine-tuning of RWKV6 on MetaMathQA, a baseline
# of the paper's RWKV6 table, with the setting of configs/rwkv6-<SIZE>.yaml.
# Variables (LOAD_MODEL, DATA_FILE, PROJ_DIR, SIZE or CONFIG, DEVICES, MICRO_BSZ, LORA_R, DRY_RUN, PYTHON) and
# examples: scripts/run.sh. Extra arguments go to train.py unchanged.
#   bash scripts/run_pissa.sh
#   DEVICES=4 bash scripts/run_pissa.sh     # 4 GPUs, still 64 samples per optimizer step
#   DRY_RUN=1 bash scripts/run_pissa.sh     # print the adapter table and trainable count, stop
exec bash "$(dirname "$0")/run.sh" pissa "$@"
