#!/usr/bin/env bash
# Install the toolchain for the gfx11 kernel build (vpatch.manager.kernels):
# Debian's hipcc (HIP 5.2, clang 15: gfx1100 yes, gfx1151 no) and the ROCm
# device bitcode. Idempotent: does nothing when both are already present.
set -euo pipefail

BITCODE=/usr/lib/x86_64-linux-gnu/amdgcn/bitcode
if command -v hipcc >/dev/null 2>&1 && [ -f "$BITCODE/ockl.bc" ] && [ -f "$BITCODE/hip.bc" ]; then
  echo "install_hip: hipcc and rocm-device-libs already installed ($(command -v hipcc))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends hipcc rocm-device-libs

HIP_PLATFORM=amd hipcc --version | head -n 3
ls "$BITCODE/ockl.bc" "$BITCODE/hip.bc" >/dev/null
echo "install_hip: ok"
