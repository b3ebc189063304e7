#!/usr/bin/env bash
# Creates .venv with the pinned requirements and the project (pip install -e .), once: later calls return at once unless requirements changed.
# Sourced by scripts/quickstart.sh and scripts/test.sh, so each works on a fresh clone by itself.
#   bash scripts/setup_venv.sh                          # CPU build of torch (torch==2.13.0)
#   REQUIREMENTS=requirements-gpu.txt bash scripts/setup_venv.sh   # keep a CUDA torch already in the venv
set -euo pipefail
cd "$(dirname "$0")/.."
REQUIREMENTS=${REQUIREMENTS:-requirements.txt}
stamp=.venv/.installed-$(cat "$REQUIREMENTS" requirements-gpu.txt pyproject.toml | sha1sum | cut -c1-12)
if [[ -f "$stamp" ]]; then exit 0; fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r "$REQUIREMENTS"
# The project itself, editable: `import src` works from any folder and the rwkv-* commands exist.
.venv/bin/python -m pip install -q --no-deps -e .
rm -f .venv/.installed-*
touch "$stamp"
