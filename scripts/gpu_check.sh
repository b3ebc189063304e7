#!/usr/bin/env bash
# The project's one prepared GPU check: everything that needs a CUDA GPU, in about 8 minutes on one H100/H200,
# with no network. Run from the repository root of a bare GPU machine whose python3 has a CUDA torch:
#
#   bash scripts/prepare_gpu_wheels.sh      # first, on a machine with network: fills .whl/ (carry it along)
#   bash scripts/gpu_check.sh               # on the GPU machine; with $OUT set, results and logs are copied there
#   DRY_RUN=1 bash scripts/gpu_check.sh     # prints the plan (every command, with sizes); needs no GPU, no torch
#   GPU_CHECK_SMALL=1 bash scripts/gpu_check.sh   # the same plumbing at toy sizes on a CPU (a check of the script)
#   GPU_CHECK_ARCH=x070 bash scripts/gpu_check.sh # the same parts for RWKV-7: 1.5B and 2.9B shapes, our WKV7
#                                                 # kernel, bench/wkv7.py (fla's chunk_rwkv7), Table 7 x070 rows
#
# Parts, each in its own process(es), timed, under `timeout`, and guarded so that one failure does not stop the
# rest (the exit status is 1 when any part failed or ran out of time; a failed optional part is a WARN):
#   wheels      install .whl/*.whl into $GPU_CHECK_SITE (/tmp/site) and put it on PYTHONPATH (torch is never installed)
#   imports     versions of torch, lightning, deepspeed, pydantic, rwkv, fla, ...
#   build-*     JIT builds ahead of use, in the background: our WKV6 kernel (bf16, fp32), DeepSpeed's FusedAdam,
#               the rwkv package's CUDA ops (what train.py, the tests, the benches and demo/chat.py load later)
#   ckpt-1.6b, ckpt-3b   random official-layout RWKV6 checkpoints, L24 D2048 and L32 D2560, vocab 65536, bf16
#               (x070: ckpt-1.5b, ckpt-2.9b, RWKV-7 at the same L and D with the released mini-LoRA widths)
#   data        a tiny SFT jsonl and GSM8K-format questions (demo/quickstart_task.py)
#   train-1.6b  train.py --peft bone --bone_b 64 on the 1.6B file, every engine default (bf16, --wkv_op auto,
#               DeepSpeed stage 2, FusedAdam); the log must say the WKV op is cuda
#   pytest-gpu  python3 -m pytest -q -m gpu tests/ (with the torch found here; scripts/test.sh would make a CPU venv)
#   merge       python3 -m src.merge of the trained adapter (alongside pytest-gpu: it runs on the CPU)
#   eval        python3 -m src.eval.math on a handful of questions; chat: demo/chat.py with a scripted question
#   wkv-bench   bench/wkv.py: our kernel vs the torch op, bf16 and fp32 -> bench/results/wkv-<gpu>.{json,md}
#               (x070: bench/wkv7.py -> bench/results/wkv7-<gpu>.{json,md})
#   table7-1.6b, table7-3b   scripts/bench_table7.sh, batch 1 ctx 512 -> bench/results/table7-<gpu>-<shape>.{json,md}
#   train-3b    train.py --peft bone on the 3B file, a few steps
#   wkv-fla     fla's chunk_rwkv6 (x070: chunk_rwkv7) added to the wkv table, last and optional (WARN, not FAIL): its Triton autotuning
#               alone can take minutes
# Then bench/results/gpu-check-<gpu>.{md,json} (one line per part) and, where $OUT is set, the results files and
# one tar of every log are copied to $OUT.
#
# Settings (environment): GPU_CHECK_BUDGET_S (470: the whole run; each part's timeout is cut to what is left),
# GPU_CHECK_WORK (/tmp/gpu_check: checkpoints, runs, logs; about 16 GB at full size), GPU_CHECK_SITE (/tmp/site),
# GPU_CHECK_WHEELS (.whl), PYTHON (python3), GPU_CHECK_T7_ROWS_16 / GPU_CHECK_T7_ROWS_3B (Table 7 rows),
# GPU_CHECK_ARCH (x060: RWKV6, the default; x070: RWKV-7). The summary is gpu-check-<gpu>.md (x070:
# gpu-check-x070-<gpu>.md), so the two runs' results sit side by side.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=${DRY_RUN:-0}
SMALL=${GPU_CHECK_SMALL:-0}
PY=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
if [[ $SMALL == 1 ]]; then BUDGET_S=${GPU_CHECK_BUDGET_S:-1800}; else BUDGET_S=${GPU_CHECK_BUDGET_S:-470}; fi
RESERVE_S=15      # kept back for the summary and the copies at the end
MIN_PART_S=20     # a part is not started with less than this left
LOGS=$WORK/logs
HELPER=scripts/gpu_check_helper.py
ARCH=${GPU_CHECK_ARCH:-x060}
case $ARCH in
  x060) NAME_A=1.6b; NAME_B=3b; WKV_STEM=wkv; WKV_BENCH=bench/wkv.py; FLA_KERNEL=chunk_rwkv6; KERNEL=WKV6; KERNEL_DIR=wkv6 ;;
  x070) NAME_A=1.5b; NAME_B=2.9b; WKV_STEM=wkv7; WKV_BENCH=bench/wkv7.py; FLA_KERNEL=chunk_rwkv7; KERNEL=WKV7; KERNEL_DIR=wkv7 ;;
  *) echo "GPU_CHECK_ARCH must be x060 or x070, got '$ARCH'"; exit 2 ;;
esac

# ---------------------------------------------------------------- sizes
if [[ $SMALL == 1 ]]; then
  SIZE_NOTE="SMALL: toy shapes on the CPU (a check of this script's plumbing, not of the GPU)"
  SHAPE_A=(2 128 65536); SHAPE_B=(2 256 65536)
  TRAIN_A=(--ctx_len 64 --micro_bsz 2 --epoch_steps 3 --accelerator cpu)
  TRAIN_B=(--ctx_len 64 --micro_bsz 1 --epoch_steps 2 --accelerator cpu)
  EVAL_ARGS=(--device cpu --limit 2 --batch_size 2 --max_new_tokens 8)
  CHAT_ARGS=(--device cpu --max_tokens 8)
  T7_COMMON=(DEVICE=cpu SETTINGS=b2t256 STEPS=1 WARMUP=0 ROUNDS=1)
  T7_ROWS_A=${GPU_CHECK_T7_ROWS_16:-lora,bone_factored}; T7_ROWS_B=${GPU_CHECK_T7_ROWS_3B:-lora}
  if [[ $ARCH == x070 ]]; then T7_SHAPE_A=x070-cpu; T7_SHAPE_B=x070-cpu; else T7_SHAPE_A=cpu; T7_SHAPE_B=cpu; fi
  N_TRAIN=64; N_TEST=4
  RESULTS=$WORK/results
else
  SIZE_NOTE="full: $ARCH $NAME_A and $NAME_B shapes on the GPU"
  SHAPE_A=(24 2048 65536); SHAPE_B=(32 2560 65536)
  TRAIN_A=(--ctx_len 512 --micro_bsz 8 --epoch_steps 16)
  TRAIN_B=(--ctx_len 512 --micro_bsz 4 --epoch_steps 4)
  EVAL_ARGS=(--limit 8 --batch_size 8 --max_new_tokens 64)
  CHAT_ARGS=(--max_tokens 48)
  T7_COMMON=(DEVICE=cuda SETTINGS=b1t512 STEPS=10 WARMUP=3 ROUNDS=1)
  T7_ROWS_A=${GPU_CHECK_T7_ROWS_16:-floor,lora,bone_mat,bone_mat_ckpt,bone_mat_layer_ckpt,bone_factored}
  T7_ROWS_B=${GPU_CHECK_T7_ROWS_3B:-lora,bone_mat,bone_mat_ckpt,bone_factored}
  if [[ $ARCH == x070 ]]; then T7_SHAPE_A=x070-1.5b; T7_SHAPE_B=x070-2.9b; else T7_SHAPE_A=1.6b; T7_SHAPE_B=3b; fi
  N_TRAIN=400; N_TEST=16
  RESULTS=bench/results
fi
CK_A=$WORK/$ARCH-$NAME_A-random.pth; CK_B=$WORK/$ARCH-$NAME_B-random.pth
DATA=$WORK/data; SFT=$DATA/train.jsonl; QUESTIONS=$DATA/test.jsonl
PROJ_A=$WORK/bone-$ARCH-$NAME_A; PROJ_B=$WORK/bone-$ARCH-$NAME_B
MERGED=$PROJ_A/merged.pth
CHAT_PROMPT="Sara has 12 shells. How many after finding 7 more?"
BONE=(--peft bone --bone_b 64 --data_type sft --epoch_count 1 --epoch_save 0 --save_every_steps 0
      --lr_init 2e-5 --lr_final 2e-5 --fresh)

# Parameters of an RWKV6 (L, D, V): per layer 6 D^2 (r,k,v,g,o + ffn.receptance) + 2 D F (ffn key, value),
# F = int(3.5 D) // 32 * 32, plus the mixing LoRAs and vectors (~470 D); embedding and head 2 V D.
# RWKV-7: 4 D^2 (r,k,v,o) + 2 D F with F = 4 D, plus its w/a/v/g LoRAs (~1000 D at these widths).
approx_params() {
  local L=$1 D=$2 V=$3 F
  if [[ $ARCH == x070 ]]; then
    echo $(( L * (4 * D * D + 8 * D * D + 1000 * D) + 2 * V * D ))
  else
    F=$(( (D * 7 / 2) / 32 * 32 ))
    echo $(( L * (6 * D * D + 2 * D * F + 470 * D) + 2 * V * D ))
  fi
}
describe_shape() {
  local n; n=$(approx_params "$@")
  printf 'L%s D%s vocab %s: ~%d.%02dB parameters, a ~%d.%d GiB bf16 file' "$1" "$2" "$3" \
    $(( n / 1000000000 )) $(( n % 1000000000 / 10000000 )) $(( n * 2 / 1073741824 )) $(( n * 2 % 1073741824 * 10 / 1073741824 ))
}

# ---------------------------------------------------------------- bookkeeping
ms() { echo $(( $(date +%s%N) / 1000000 )); }
T_START=$(ms)
elapsed_s() { echo $(( ($(ms) - T_START) / 1000 )); }
quote() { local out; printf -v out '%q ' "$@"; echo "${out% }"; }
secs() { printf '%d.%d' $(( $1 / 1000 )) $(( $1 % 1000 / 100 )); }   # milliseconds -> "12.3"
NOT_RUN_REASON=""    # set when nothing more can run (no CUDA GPU on a full run)
FAILED=0
WARNED=0
declare -A BG_PID=() BG_BUDGET=() BG_CHECK=()

OPTIONAL_PARTS=" wkv-fla "   # a comparison with another project's kernel: its failure is a WARN, not a FAIL
record() {  # record NAME STATUS MILLISECONDS FIGURE
  local name=$1 status=$2 millis=$3 figure=${4//$'\t'/ }
  figure=${figure//$'\n'/ }
  [[ $status == FAIL && $OPTIONAL_PARTS == *" $name "* ]] && status=WARN
  [[ $status == FAIL ]] && FAILED=$((FAILED + 1))
  [[ $status == WARN ]] && WARNED=$((WARNED + 1))
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(secs "$millis")" "${figure:0:300}" >>"$LOGS/parts.tsv"
  printf 'PART %-12s %-4s %7ss  %s\n' "$name" "$status" "$(secs "$millis")" "${figure:0:300}"
}

last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-200; }

plan() {  # plan NAME TIMEOUT WHAT CMD...
  local name=$1 budget=$2 what=$3; shift 3
  printf '\n[%s] timeout %ss: %s\n' "$name" "$budget" "$what"
  printf '+ %s\n' "$(quote "$@")"
}

budget_for() {  # echo the timeout a part may have now, or nothing if none is left
  local budget=$1 left
  left=$(( BUDGET_S - $(elapsed_s) - RESERVE_S ))
  (( left < MIN_PART_S )) && return 1
  (( budget > left )) && budget=$left
  echo "$budget"
}

# Build folders of the background builds (in TORCH_EXTENSIONS_DIR), so that their locks are left alone while they run.
declare -A BG_DIRS=([build-wkv-bf16]="${KERNEL_DIR}_n64_t4096_bf16" [build-wkv-fp32]="${KERNEL_DIR}_n64_t4096_fp32"
                    [build-fused-adam]="fused_adam" [build-rwkv]="wkv_cuda rwkv6 wkv7s")
clear_stale_locks() {  # a JIT build killed half-way leaves its folder's lock file, on which every later load of that
  local keep=() name lock dir  # extension would wait until its own timeout: remove those no running build owns
  for name in "${!BG_PID[@]}"; do
    kill -0 "${BG_PID[$name]}" 2>/dev/null && keep+=(${BG_DIRS[$name]:-})
  done
  for lock in "${TORCH_EXTENSIONS_DIR:-/nonexistent}"/*/lock; do
    [[ -f $lock ]] || continue
    dir=$(basename "$(dirname "$lock")")
    [[ " ${keep[*]} " == *" $dir "* ]] && continue
    rm -f "$lock" && echo "removed the stale build lock $lock" | tee -a "$LOGS/locks.log"
  done
}

finish_part() {  # finish_part NAME RC MILLISECONDS BUDGET CHECK LOG: status from rc and the part's check
  local name=$1 rc=$2 millis=$3 budget=$4 check=$5 log=$6 status=PASS
  FIGURE=""
  if [[ $check != - ]]; then
    "$check" "$log" "$rc" || status=FAIL
  fi
  if (( rc == 124 || rc == 137 )); then
    clear_stale_locks
    status=FAIL; FIGURE="timed out after ${budget}s; ${FIGURE:-$(last_line "$log")}"
  elif (( rc != 0 )); then
    status=FAIL; FIGURE="exit $rc: ${FIGURE:-$(last_line "$log")}"
  fi
  record "$name" "$status" "$millis" "${FIGURE:-$(last_line "$log")}"
}

run_part() {  # run_part NAME TIMEOUT CHECK WHAT CMD...   (CHECK: a function of (log, rc) setting FIGURE, or -)
  local name=$1 budget=$2 check=$3 what=$4; shift 4
  if [[ $DRY_RUN == 1 ]]; then plan "$name" "$budget" "$what" "$@"; return 0; fi
  if [[ -n $NOT_RUN_REASON ]]; then record "$name" FAIL 0 "not run: $NOT_RUN_REASON"; return 1; fi
  if ! budget=$(budget_for "$budget"); then
    record "$name" FAIL 0 "not run: out of time (${BUDGET_S}s budget)"; return 1
  fi
  local log=$LOGS/$name.log t0 rc
  echo ">>> [$name] at $(elapsed_s)s, timeout ${budget}s: $(quote "$@")"
  echo "+ $(quote "$@")" >"$log"
  t0=$(ms)
  timeout -k 10 "$budget" "$@" >>"$log" 2>&1 </dev/null
  rc=$?
  finish_part "$name" "$rc" $(( $(ms) - t0 )) "$budget" "$check" "$log"
  [[ $rc == 0 ]]
}

start_bg() {  # start_bg NAME TIMEOUT CHECK WHAT CMD...: like run_part, in the background; wait_bg collects it
  local name=$1 budget=$2 check=$3 what=$4; shift 4
  if [[ $DRY_RUN == 1 ]]; then plan "$name" "$budget" "(background) $what" "$@"; return 0; fi
  if [[ -n $NOT_RUN_REASON ]]; then record "$name" FAIL 0 "not run: $NOT_RUN_REASON"; return 1; fi
  if ! budget=$(budget_for "$budget"); then
    record "$name" FAIL 0 "not run: out of time (${BUDGET_S}s budget)"; return 1
  fi
  local log=$LOGS/$name.log
  echo ">>> [$name] at $(elapsed_s)s, background, timeout ${budget}s: $(quote "$@")"
  echo "+ $(quote "$@")" >"$log"
  rm -f "$LOGS/$name.rc"
  (
    t0=$(ms)
    timeout -k 10 "$budget" "$@" >>"$log" 2>&1 </dev/null
    echo "$? $(( $(ms) - t0 ))" >"$LOGS/$name.rc"
  ) &
  BG_PID[$name]=$!; BG_BUDGET[$name]=$budget; BG_CHECK[$name]=$check
}

wait_bg() {  # wait_bg NAME: wait for a background part and record it (once)
  local name=$1 rc millis
  if [[ $DRY_RUN == 1 ]]; then printf '\n[wait] for %s (background) to finish\n' "$name"; return 0; fi
  [[ -z ${BG_PID[$name]:-} ]] && return 1
  wait "${BG_PID[$name]}"
  read -r rc millis <"$LOGS/$name.rc" || { rc=1; millis=0; }
  finish_part "$name" "$rc" "$millis" "${BG_BUDGET[$name]}" "${BG_CHECK[$name]}" "$LOGS/$name.log"
  unset "BG_PID[$name]"
  [[ $rc == 0 ]]
}

skip_small() {  # a GPU-only part in SMALL mode
  [[ $DRY_RUN == 1 ]] && return 0
  record "$1" SKIP 0 "SMALL mode: needs a CUDA GPU"
}

# ---------------------------------------------------------------- checks: set FIGURE, return non-zero to fail
check_imports() {
  FIGURE=$(awk '$1 == "pkg" && $3 != "MISSING" {printf "%s %s, ", $2, $3}
                $1 == "pkg" && $3 == "MISSING" {printf "%s MISSING%s, ", $2, ($4 == "(optional):" ? " (optional)" : "")}' \
           "$1" | sed 's/, $//')
  ! grep -q "MISSING (required)" "$1"
}
check_line() {  # the last line that a helper step prints about itself
  FIGURE=$(grep -E '^(wkv[67] cuda|DeepSpeed FusedAdam|rwkv package|checkpoint )' "$1" | tail -n 1)
  [[ -n $FIGURE ]]
}
check_data() {
  local a b
  a=$(wc -l <"$SFT" 2>/dev/null || echo 0); b=$(wc -l <"$QUESTIONS" 2>/dev/null || echo 0)
  FIGURE="$a SFT records, $b GSM8K-format questions in $DATA"
  (( a > 0 && b > 0 ))
}
check_train() {  # check_train LOG RC PROJ
  local proj=$3 op want=cuda
  [[ $SMALL == 1 ]] && want=torch
  op=$(grep -o 'wkv op [a-z_]*' "$1" | head -n 1)   # train.py's start summary: "engine ... | wkv op cuda | ..."
  [[ -n $op ]] || op=$(grep -o "WKV6 op 'auto' on [a-z:0-9]*: using '[a-z_]*'" "$1" | head -n 1 \
                       | sed -E "s/.*using '([a-z_]*)'/wkv op \\1/")
  FIGURE=$("$PY" "$HELPER" figure train "$proj" 2>&1)
  local ok=$?
  FIGURE="$op; $FIGURE"
  if [[ $op != "wkv op $want" ]]; then FIGURE="expected 'wkv op $want' in the log, found '${op:-nothing}'; $FIGURE"; return 1; fi
  if [[ ! -f $proj/adapter-final.pth ]]; then FIGURE="no $proj/adapter-final.pth; $FIGURE"; return 1; fi
  return $ok
}
check_train_a() { check_train "$1" "$2" "$PROJ_A"; }
check_train_b() { check_train "$1" "$2" "$PROJ_B"; }
check_pytest() {
  FIGURE=$(grep -E '(passed|failed|skipped|error|no tests ran)' "$1" | tail -n 1)
  [[ $FIGURE != *failed* && $FIGURE != *error* && -n $FIGURE ]] || return 1
  [[ $SMALL == 1 || $FIGURE == *passed* ]]
}
check_merge() {
  FIGURE=$(grep -E '^merged ' "$1" | tail -n 1 | sed -E 's/^merged .* into [^:]*: //')
  [[ -f $MERGED ]] && FIGURE="$FIGURE; $(du -h "$MERGED" | cut -f1) file"
  [[ -f $MERGED ]]
}
check_eval() {
  local accuracy
  accuracy=$(grep -E 'accuracy' "$1" | tail -n 1)
  FIGURE="$(grep -o 'wkv op [a-z_]*' "$1" | head -n 1); $accuracy"
  [[ -n $accuracy ]]
}
check_chat() {
  local reply
  reply=$(grep -E '^\{.*"reply"' "$1" | head -n 1)
  FIGURE="reply: ${reply:0:160}"
  [[ -n $reply ]]
}
check_wkv() {
  if [[ $SMALL == 1 ]]; then FIGURE=$(last_line "$1"); return 0; fi
  FIGURE=$("$PY" "$HELPER" figure wkv "$RESULTS/$WKV_STEM-$GPU_SLUG.json" 2>&1)
}
check_wkv_fla() {
  if [[ $SMALL == 1 ]]; then FIGURE=$(last_line "$1"); return 0; fi
  FIGURE=$("$PY" "$HELPER" figure wkv-fla "$RESULTS/$WKV_STEM-$GPU_SLUG.json" 2>&1)
}
check_t7_a() { FIGURE=$("$PY" "$HELPER" figure table7 "$RESULTS/table7-$T7_TAG_A.json" 2>&1); }
check_t7_b() { FIGURE=$("$PY" "$HELPER" figure table7 "$RESULTS/table7-$T7_TAG_B.json" 2>&1); }

# ---------------------------------------------------------------- 0. where we are
if [[ $DRY_RUN == 1 ]]; then
  GPU_SLUG=${GPU_SLUG:-GPUNAME}
  if command -v nvidia-smi >/dev/null 2>&1; then
    GPU_SLUG=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 \
               | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
    GPU_SLUG=${GPU_SLUG:-GPUNAME}
  fi
  EXT_DIR_PLAN=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/rwkv_bone/torch_extensions}
  echo "GPU check plan ($SIZE_NOTE); budget ${BUDGET_S}s in all, each part's timeout cut to what is left."
  echo "work folder $WORK (checkpoints, runs, logs); results in $RESULTS; JIT builds cached in $EXT_DIR_PLAN;"
  echo "GPU name in result file names: $GPU_SLUG (torch.cuda.get_device_name, slugged, on the GPU machine)."
else
  mkdir -p "$LOGS" "$RESULTS"
  : >"$LOGS/parts.tsv"
  touch "$LOGS/.start"
  echo "GPU check ($SIZE_NOTE), budget ${BUDGET_S}s, work folder $WORK, logs in $LOGS"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The project is not pip-installed on the GPU machine: its root goes on the path instead.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# ---------------------------------------------------------------- 1. wheels
mapfile -t PINS < <(bash scripts/prepare_gpu_wheels.sh --print-pins)
missing_wheels=()
for pin in "${PINS[@]}"; do
  stem="${pin%%==*}"; stem="${stem//-/_}-${pin##*==}-"
  compgen -G "$WHEELS/${stem}*.whl" >/dev/null || missing_wheels+=("$pin")
done
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  n_wheels=$(ls "$WHEELS"/*.whl | wc -l); wheel_size=$(du -ch "$WHEELS"/*.whl | tail -n 1 | cut -f1)
  what="$n_wheels wheels, $wheel_size, from $WHEELS/ into $SITE (then PYTHONPATH=$SITE)"
  (( ${#missing_wheels[@]} )) && what="$what; MISSING: ${missing_wheels[*]}"
  check_wheels() {
    FIGURE="$n_wheels wheels ($wheel_size) into $SITE"
    if (( ${#missing_wheels[@]} )); then FIGURE="$FIGURE; missing: ${missing_wheels[*]}"; return 1; fi
  }
  run_part wheels 120 check_wheels "$what" \
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
elif [[ $DRY_RUN == 1 ]]; then
  printf '\n[wheels] no %s/ here: the GPU machine would report what is missing (%s). Make it with\n+ bash scripts/prepare_gpu_wheels.sh\n' \
    "$WHEELS" "${PINS[*]}"
else
  record wheels SKIP 0 "no $WHEELS/*.whl: missing ${missing_wheels[*]} (make them with bash scripts/prepare_gpu_wheels.sh where pip reaches PyPI, and carry $WHEELS); using what is installed"
fi

# ---------------------------------------------------------------- 2. torch, the GPU, the packages
if [[ $DRY_RUN == 1 ]]; then
  plan env 120 "torch version, CUDA, GPU name/arch (sets TORCH_CUDA_ARCH_LIST, TORCH_EXTENSIONS_DIR)" "$PY" "$HELPER" env
else
  timeout 120 "$PY" "$HELPER" env >"$LOGS/env.sh" 2>"$LOGS/env.log"
  # shellcheck disable=SC1091
  source "$LOGS/env.sh" 2>/dev/null || true
  : "${TORCH_VERSION:=missing}" "${CUDA_OK:=0}" "${GPU_NAME:=none}" "${GPU_SLUG:=cpu}" "${GPU_ARCH:=}" "${EXT_DIR:=}"
  : "${TORCH_CUDA:=none}" "${GPU_MEM_GIB:=0}"
  [[ -n $EXT_DIR ]] || EXT_DIR=$HOME/.cache/rwkv_bone/torch_extensions
  # One cache for every JIT build: train.py passes TORCH_EXTENSIONS_DIR to our kernel, the tests and benches use
  # the kernel's default folder, DeepSpeed and the rwkv package use TORCH_EXTENSIONS_DIR: make them all the same,
  # so each kernel is compiled once (by the build-* parts) and loaded from the cache by every later part.
  export TORCH_EXTENSIONS_DIR=$EXT_DIR
  [[ -n $GPU_ARCH ]] && export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$GPU_ARCH}
  env_figure="torch $TORCH_VERSION (CUDA $TORCH_CUDA), GPU $GPU_NAME ${GPU_MEM_GIB} GiB sm ${GPU_ARCH:-none}, nvcc $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo missing), python $("$PY" -c 'import platform; print(platform.python_version())' 2>/dev/null)"
  if [[ $CUDA_OK == 1 || $SMALL == 1 ]]; then
    record env PASS 0 "$env_figure"
  else
    record env FAIL 0 "$env_figure: torch sees no CUDA GPU ($(tail -n 1 "$LOGS/env.log" 2>/dev/null))"
    NOT_RUN_REASON="torch sees no CUDA GPU (env part)"
    RESULTS=$WORK/results   # nothing for bench/results: keep the summary out of the repository
    mkdir -p "$RESULTS"
  fi
fi
T7_TAG_A="$GPU_SLUG-$T7_SHAPE_A"; T7_TAG_B="$GPU_SLUG-$T7_SHAPE_B"
[[ $SMALL == 1 ]] && { T7_TAG_A=small-a; T7_TAG_B=small-b; }

# ---------------------------------------------------------------- 3. JIT builds (background) while the
# package versions are read and the inputs are made (foreground)
if [[ $SMALL == 1 ]]; then
  for name in build-wkv-bf16 build-wkv-fp32 build-fused-adam build-rwkv; do skip_small "$name"; done
else
  start_bg build-wkv-bf16 240 check_line "our $KERNEL kernel, bf16 (train.py, eval, benches)" "$PY" "$HELPER" build-wkv bf16 --arch "$ARCH"
  start_bg build-wkv-fp32 240 check_line "our $KERNEL kernel, fp32 (tests, wkv bench)" "$PY" "$HELPER" build-wkv fp32 --arch "$ARCH"
  start_bg build-fused-adam 240 check_line "DeepSpeed FusedAdam (train.py under DeepSpeed on GPU)" "$PY" "$HELPER" build-fused-adam
  start_bg build-rwkv 300 check_line "the rwkv package's CUDA ops (demo/chat.py's default engine)" "$PY" "$HELPER" build-rwkv "$WORK/rwkv-build" --arch "$ARCH"
fi
run_part imports 90 check_imports "versions of the packages every part imports" "$PY" "$HELPER" imports
run_part "ckpt-$NAME_A" 150 check_line "$ARCH $(describe_shape "${SHAPE_A[@]}")" \
  "$PY" "$HELPER" checkpoint "$CK_A" --n_layer "${SHAPE_A[0]}" --n_embd "${SHAPE_A[1]}" --vocab_size "${SHAPE_A[2]}" --arch "$ARCH"
run_part data 60 check_data "$N_TRAIN SFT records (query/response) and $N_TEST GSM8K-format questions" \
  "$PY" demo/quickstart_task.py --out_dir "$DATA" --seed 0 --n_train "$N_TRAIN" --n_test "$N_TEST" --n_pretrain 10
run_part "ckpt-$NAME_B" 180 check_line "$ARCH $(describe_shape "${SHAPE_B[@]}")" \
  "$PY" "$HELPER" checkpoint "$CK_B" --n_layer "${SHAPE_B[0]}" --n_embd "${SHAPE_B[1]}" --vocab_size "${SHAPE_B[2]}" --arch "$ARCH"
wait_bg build-wkv-bf16
wait_bg build-fused-adam

# ---------------------------------------------------------------- 4. train, test, merge, evaluate, chat
steps_a=$(( ${TRAIN_A[5]} )); tokens_a=$(( ${TRAIN_A[1]} * ${TRAIN_A[3]} * ${TRAIN_A[5]} ))
run_part "train-$NAME_A" 180 check_train_a \
  "Bone b=64, $steps_a steps of micro_bsz ${TRAIN_A[3]} x ctx ${TRAIN_A[1]} ($tokens_a tokens); engine defaults" \
  "$PY" train.py "${BONE[@]}" --load_model "$CK_A" --data_file "$SFT" --proj_dir "$PROJ_A" "${TRAIN_A[@]}"
start_bg merge 150 check_merge "fold adapter-final.pth into the $NAME_A base (CPU, fp32), write merged.pth (bf16)" \
  "$PY" -m src.merge --base "$CK_A" --adapter "$PROJ_A/adapter-final.pth" --output "$MERGED"
wait_bg build-wkv-fp32
run_part pytest-gpu 150 check_pytest "the tests marked gpu, with this machine's torch" \
  "$PY" -m pytest -q -m gpu tests/
wait_bg merge
run_part eval 90 check_eval "greedy GSM8K-format scoring of the merged model: ${EVAL_ARGS[*]}" \
  "$PY" -m src.eval.math --model "$MERGED" --data "$QUESTIONS" --format gsm8k --out "$WORK/eval-$NAME_A.jsonl" "${EVAL_ARGS[@]}"
CHAT_ENGINE=()
if ! wait_bg build-rwkv && [[ $DRY_RUN != 1 && $SMALL != 1 ]]; then
  # The rwkv package's CUDA build failed (build-rwkv says why): its engine would only fail again, slowly, so the
  # chat part serves the merged model with this project's own engine instead.
  CHAT_ENGINE=(--engine native)
fi
run_part chat 150 check_chat "one scripted question to the merged model (default engine: the rwkv package)" \
  "$PY" demo/chat.py --model "$MERGED" --prompt "$CHAT_PROMPT" --jsonl "${CHAT_ARGS[@]}" "${CHAT_ENGINE[@]}"

# ---------------------------------------------------------------- 5. benchmarks
run_part wkv-bench 150 check_wkv "B8 T1024 H32 N64: our $KERNEL cuda op and the torch op, bf16 and fp32 -> $RESULTS/$WKV_STEM-$GPU_SLUG.{json,md}" \
  "$PY" "$WKV_BENCH" --skip-cpu --variants cuda,torch
run_part "table7-$NAME_A" 150 check_t7_a "Table 7 rows $T7_ROWS_A at shape $T7_SHAPE_A -> $RESULTS/table7-$T7_TAG_A.{json,md}" \
  env PYTHON="$PY" "${T7_COMMON[@]}" SHAPES="$T7_SHAPE_A" ROWS="$T7_ROWS_A" \
  bash scripts/bench_table7.sh --tag "$T7_TAG_A" --out_dir "$RESULTS" --timeout 120
run_part "table7-$NAME_B" 150 check_t7_b "Table 7 rows $T7_ROWS_B at shape $T7_SHAPE_B -> $RESULTS/table7-$T7_TAG_B.{json,md}" \
  env PYTHON="$PY" "${T7_COMMON[@]}" SHAPES="$T7_SHAPE_B" ROWS="$T7_ROWS_B" \
  bash scripts/bench_table7.sh --tag "$T7_TAG_B" --out_dir "$RESULTS" --timeout 120
run_part infctx-1.6b 150 - "Bone, one pass vs --chunk_ctx 512 at ctx 512-16384, shape $T7_SHAPE_A -> $RESULTS/infctx-*.{json,md}" "$PY" bench/infctx.py --shape "$T7_SHAPE_A" --ctx "$([[ $SMALL == 1 ]] && echo 1024 || echo 512,2048,8192,16384)" --steps 1 --out_dir "$RESULTS"

# ---------------------------------------------------------------- 6. the 3B checkpoint through train.py
steps_b=$(( ${TRAIN_B[5]} )); tokens_b=$(( ${TRAIN_B[1]} * ${TRAIN_B[3]} * ${TRAIN_B[5]} ))
run_part "train-$NAME_B" 120 check_train_b \
  "Bone b=64 on the $NAME_B file, $steps_b steps of micro_bsz ${TRAIN_B[3]} x ctx ${TRAIN_B[1]} ($tokens_b tokens)" \
  "$PY" train.py "${BONE[@]}" --load_model "$CK_B" --data_file "$SFT" --proj_dir "$PROJ_B" "${TRAIN_B[@]}"

# ---------------------------------------------------------------- 7. fla's Triton kernel, with what time is left
# Last, because its first call autotunes fla's Triton kernels (hundreds of configurations: minutes); optional.
run_part wkv-fla 150 check_wkv_fla "fla $FLA_KERNEL bf16 at the same shape, added to $RESULTS/$WKV_STEM-$GPU_SLUG.{json,md} (optional)" \
  "$PY" "$WKV_BENCH" --skip-cpu --variants fla --update

# ---------------------------------------------------------------- 8. summary, results and logs to $OUT
SUMMARY_STEM=gpu-check-$GPU_SLUG; [[ $ARCH == x070 ]] && SUMMARY_STEM=gpu-check-x070-$GPU_SLUG
SUMMARY_MD=$RESULTS/$SUMMARY_STEM.md; SUMMARY_JSON=$RESULTS/$SUMMARY_STEM.json
TARBALL=$WORK/$SUMMARY_STEM-logs.tar.gz
if [[ $DRY_RUN == 1 ]]; then
  printf '\n[summary] one line per part -> %s and %s\n' "$SUMMARY_MD" "$SUMMARY_JSON"
  printf '+ %s\n' "$(quote "$PY" "$HELPER" summary "$LOGS/parts.tsv" --md "$SUMMARY_MD" --json "$SUMMARY_JSON")"
  printf '\n[collect] every log, metrics.csv, loss.png, eval answers and the results in one tar; with $OUT set, the\n'
  printf 'tar and the results files (at most 7) are copied there (the device tool returns 8 files at most)\n'
  printf '+ %s\n' "$(quote tar -czf "$TARBALL" -C "$WORK" logs)"
  printf '\ntotal budget %ss; %s\n' "$BUDGET_S" "dry run: nothing was run"
  exit 0
fi

for name in "${!BG_PID[@]}"; do wait_bg "$name"; done   # any background part not collected yet
"$PY" "$HELPER" summary "$LOGS/parts.tsv" --md "$SUMMARY_MD" --json "$SUMMARY_JSON" \
  --info "gpu_name=$GPU_NAME" --info "torch=$TORCH_VERSION" --info "cuda=$TORCH_CUDA" \
  --info "mode=$SIZE_NOTE" --info "budget_s=$BUDGET_S" --info "elapsed_s=$(elapsed_s)" \
  --info "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$LOGS/summary.log" 2>&1 \
  || echo "(summary files not written: see $LOGS/summary.log)"
mapfile -t run_results < <(find "$RESULTS" -maxdepth 1 -type f -newer "$LOGS/.start" \( -name '*.json' -o -name '*.md' \) | sort)
extras=()
for f in "$PROJ_A/metrics.csv" "$PROJ_A/loss.png" "$PROJ_B/metrics.csv" "$PROJ_B/loss.png" "$WORK/eval-$NAME_A.jsonl"; do
  [[ -f $f ]] && extras+=("${f#"$WORK"/}")
done
mkdir -p "$WORK/results-copy"
(( ${#run_results[@]} )) && cp "${run_results[@]}" "$WORK/results-copy/"
tar -czf "$TARBALL" -C "$WORK" logs results-copy "${extras[@]}" 2>>"$LOGS/summary.log" \
  || echo "(log tar incomplete: see $LOGS/summary.log)"
if [[ -n ${OUT:-} ]]; then
  mkdir -p "$OUT"
  copied=0
  [[ -f $SUMMARY_MD ]] && cp "$SUMMARY_MD" "$OUT/" && copied=1
  for f in "${run_results[@]}"; do
    [[ $f == "$SUMMARY_MD" || $f == "$SUMMARY_JSON" ]] && continue
    (( copied >= 7 )) && break
    cp "$f" "$OUT/" && copied=$((copied + 1))
  done
  cp "$TARBALL" "$OUT/"
  echo "copied $((copied + 1)) files to \$OUT: $(ls "$OUT" | tr '\n' ' ')"
fi

echo
echo "================ GPU check summary ($SIZE_NOTE) ================"
awk -F'\t' '{printf "PART %-12s %-4s %7ss  %s\n", $1, $2, $3, $4}' "$LOGS/parts.tsv"
n_parts=$(wc -l <"$LOGS/parts.tsv")
echo "total elapsed $(elapsed_s)s (budget ${BUDGET_S}s); $FAILED of $n_parts parts failed, $WARNED optional part(s) warned; summary $SUMMARY_MD; logs $TARBALL"
(( FAILED == 0 ))
