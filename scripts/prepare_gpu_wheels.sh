#!/usr/bin/env bash
# Fill .whl/ with every Python package scripts/gpu_check.sh needs that the GPU machine's image lacks, as wheels
# for its Python 3.12 on x86-64 Linux, so the check can run there with no network. Run it on a machine WITH network
# (any CPU machine; pip must reach PyPI), from anywhere:
#
#   bash scripts/prepare_gpu_wheels.sh            # fills .whl/ (git ignores it), prints each wheel and the total
#   bash scripts/prepare_gpu_wheels.sh --print-pins    # only the NAME==VERSION list (gpu_check.sh reads it)
#
# The GPU image has torch 2.11 (CUDA 13.0), pytorch-lightning 2.6.6, ninja, triton, numpy, einops, msgpack,
# psutil, py-cpuinfo, packaging, tqdm, tokenizers, typing-inspect, transformers, ... but not these. Pins, with the
# reason each is here (Requires-Dist of each wheel checked against the image's package list, extras skipped):
#   deepspeed 0.19.8   requirements-gpu.txt's pin; an sdist, so its wheel is built here (pure Python: its ops are
#                      JIT-built on first use). Needs einops hjson msgpack ninja numpy packaging psutil py-cpuinfo
#                      pydantic torch tqdm: all in the image but hjson and pydantic.
#   hjson 3.1.0        for deepspeed.
#   pydantic 2.14.4    for deepspeed; needs annotated-types>=0.6, pydantic-core==2.50.5, typing-extensions>=4.16,
#                      typing-inspection>=0.4.4 (the image has typing-extensions, of an unknown version, and
#                      typing-inspect, a different package), so all four travel too.
#   pydantic-core 2.50.5   binary: the cp312 manylinux x86-64 wheel.
#   rwkv 0.8.32        requirements-gpu.txt's pin (chat demo engine, world vocabulary); needs tokenizers (in the image).
#   fla-core 0.6.0     fla.ops.rwkv6.chunk_rwkv6, the Triton kernel bench/wkv.py compares with; needs einops
#                      (in the image). Its companion flash-linear-attention (fla.layers / fla.models, which need
#                      transformers) is left out on purpose: the kernel does not need it, and with it installed
#                      `import fla` imports transformers, slowly and with one more way to fail.
set -euo pipefail

PINS=(
  "deepspeed==0.19.8"
  "hjson==3.1.0"
  "pydantic==2.14.4"
  "pydantic-core==2.50.5"
  "annotated-types==0.8.0"
  "typing-inspection==0.4.5"
  "typing-extensions==4.16.0"
  "rwkv==0.8.32"
  "fla-core==0.6.0"
)
# Built here from its source distribution (no wheel on PyPI); every other pin is downloaded as a wheel.
BUILT_FROM_SDIST="deepspeed==0.19.8"

if [[ "${1:-}" == "--print-pins" ]]; then
  printf '%s\n' "${PINS[@]}"
  exit 0
fi

cd "$(dirname "$0")/.."
DEST="${WHEEL_DIR:-.whl}"
PYTHON="${PYTHON:-python3}"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl   # one version of each: two versions of a package stop the install on the GPU machine
download=()
for pin in "${PINS[@]}"; do
  [[ "$pin" == "$BUILT_FROM_SDIST" ]] || download+=("$pin")
done

echo "downloading ${#download[@]} wheels for CPython 3.12 x86-64 into $DEST/"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${download[@]}"
echo "building the $BUILT_FROM_SDIST wheel (pure Python) into $DEST/"
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST" "$BUILT_FROM_SDIST"

# Every pin must have exactly one wheel, and a binary one must be for cp312 x86-64.
status=0
for pin in "${PINS[@]}"; do
  name="${pin%%==*}"; version="${pin##*==}"
  stem="${name//-/_}-${version}-"
  found=("$DEST"/${stem}*.whl)
  if [[ ! -e "${found[0]}" ]]; then
    echo "MISSING: no wheel for $pin in $DEST/" >&2; status=1; continue
  fi
  if (( ${#found[@]} != 1 )); then
    echo "MORE THAN ONE wheel for $pin: ${found[*]}" >&2; status=1
  fi
  case "${found[0]}" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-cp312-*x86_64*.whl|*-cp312-abi3-*x86_64*.whl) ;;
    *) echo "WRONG PLATFORM for the GPU machine (CPython 3.12, x86-64): ${found[0]}" >&2; status=1 ;;
  esac
done
extra=$(ls "$DEST"/*.whl | wc -l)
if (( extra != ${#PINS[@]} )); then
  echo "$DEST/ holds $extra wheels for ${#PINS[@]} pins: remove the others" >&2; status=1
fi

echo
echo "wheel                                                                     size"
for wheel in "$DEST"/*.whl; do
  printf '%-70s %8s\n' "$(basename "$wheel")" "$(du -h "$wheel" | cut -f1)"
  if command -v unzip >/dev/null; then
    requires=$(unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
               | sed 's/^Requires-Dist: //' | tr '\n' ',' | sed 's/,$//; s/,/, /g' || true)
    [[ -n "$requires" ]] && echo "    requires: $requires"
  fi
done
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $((total / 1024)) KiB in $DEST/ (carry it to the GPU machine: the device tool's carry: [\"$DEST\"])"
exit "$status"
