#!/usr/bin/env bash
# The test suite, as README gives it and CI runs it: a venv with the pinned requirements, then pytest.
# GPU-only tests skip themselves on a machine without CUDA. pytest's exit 5 (nothing collected) is a failure.
#   bash scripts/test.sh                 # everything, after the lint check (ruff, configured in pyproject.toml)
#   bash scripts/test.sh tests/test_wkv6.py -k chunk    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
if [[ $# -eq 0 ]]; then
  .venv/bin/ruff check .
fi
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
if [[ "$status" -eq 5 ]]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
