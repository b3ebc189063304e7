#!/usr/bin/env bash
# Reproduce the Bone paper's Table 7 (memory and tokens/s of fine-tuning) on this machine.
# Results: bench/results/table7-<device>.json and .md (cpu, or the GPU name's slug).
#
#   bash scripts/bench_table7.sh                       # auto: CUDA if torch sees a GPU, else the CPU table
#   DEVICE=cuda SHAPES=1.6b bash scripts/bench_table7.sh
set -euo pipefail

DEVICE="${DEVICE:-auto}"          # auto | cpu | cuda
SHAPES="${SHAPES:-}"              # empty: per device (cuda: 1.6b,3b; cpu: cpu). Choices: 1.6b, 3b, cpu
SETTINGS="${SETTINGS:-}"          # empty: per device (cuda: b1t512,b8t1024; cpu: b2t256)
ROWS="${ROWS:-all}"               # all, or e.g. lora,bone_mat,bone_factored
STEPS="${STEPS:-}"                # timed steps per row (empty: 10 on cuda, 5 on cpu)
WARMUP="${WARMUP:-}"              # untimed steps first (empty: 3 on cuda, 2 on cpu)
ROUNDS="${ROUNDS:-}"              # repeat every row (empty: 1 on cuda, 2 on cpu)
PYTHON="${PYTHON:-}"              # empty: the repo's .venv if present, else python3

cd "$(dirname "$0")/.."
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"

args=(--device "$DEVICE" --rows "$ROWS")
[ -n "$SHAPES" ] && args+=(--shapes "$SHAPES")
[ -n "$SETTINGS" ] && args+=(--settings "$SETTINGS")
[ -n "$STEPS" ] && args+=(--steps "$STEPS")
[ -n "$WARMUP" ] && args+=(--warmup "$WARMUP")
[ -n "$ROUNDS" ] && args+=(--rounds "$ROUNDS")

exec "$PYTHON" bench/table7.py "${args[@]}" "$@"
