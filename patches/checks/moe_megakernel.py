"""Effect check for the `moe-megakernel` entry (an overlay nothing builds until moe-megakernel-binding): the
persistent MoE decode megakernel is in the tree and its device code builds for gfx1100 at the tree's launch,
as the fork's second megakernel: per-slot partials and the top-k reduce in LDS, no global atomics (the first
megakernel's HBM partials and grid barrier), no scratch.

Exit 0: pass; 1: fail; 2: the check could not run (no vLLM, no hipcc).
"""
from __future__ import annotations

import re

from _cxx import gfx1100_isa, rocm_hip
from _scope import announce, verdict
from moe_megakernel_act_sum import instantiation, launch

COVERS = [
    "csrc/rocm/moe_megakernel.cuh of the tree compiled device-only for gfx1100 with hipcc at the tree's launch "
    "(moe_megakernel_cfg.h; bf16, group size 32, an 8192-element activation slab, silu not fused): it builds; "
    "its LDS holds more than the activation slab (the per-slot partials), it reads and writes LDS, has no "
    "global atomics and no scratch (no spilled partials)",
]
CANNOT = [
    "the kernel's speed or results on gfx11 (no gfx11 GPU; the binding's check runs the op's documented "
    "result on a ROCm stand-in); gfx1151 (Debian's clang 15 cannot target it; gfx1100 runs the same code)",
]
SLAB_BYTES = 8192 * 2  # the bf16 activation slab (LDS_ELEMS) the instantiation asks for
INST = instantiation(fuse_silu=False)


def _count(isa: str, pattern: str) -> int:
    return len(re.findall(rf"^\s*{pattern}\b", isa, re.M))


def main() -> int:
    announce("moe-megakernel", COVERS, CANNOT)
    found = rocm_hip()
    if found is None:
        return 2
    rocm, hip = found
    header, cfg = rocm / "moe_megakernel.cuh", rocm / "moe_megakernel_cfg.h"
    if not header.is_file() or not cfg.is_file():
        return verdict([f"no {header.name} / {cfg.name} in {rocm}: the MoE megakernel is not in this tree"], "")
    lc = launch(cfg.read_text())
    if lc is None:
        return verdict([f"no kMegaCfg = {{thrds, ytile, wvprgrp, a_chunk, unrl}} in {cfg}"], "")
    thrds, _, waves, a_chunk, _ = lc
    isa = gfx1100_isa(hip, INST, rocm, what="bf16 megakernel", prefix="vpatch-mega-")
    if isinstance(isa, int):
        return isa
    lds = re.search(r"; LDSByteSize: (\d+) bytes", isa)
    scratch = re.search(r"; ScratchSize: (\d+)", isa)
    lds_b, scratch_b = (int(lds.group(1)) if lds else -1), (int(scratch.group(1)) if scratch else -1)
    stores, loads = _count(isa, r"ds_store\w*"), _count(isa, r"ds_load\w*")
    atomics = _count(isa, r"(?:global|buffer|flat)_atomic\w*")
    barriers = _count(isa, r"s_barrier")
    print(f"gfx1100 bf16 megakernel ({waves} waves of {thrds}, A_CHUNK {a_chunk}): LDS {lds_b} bytes "
          f"(activation slab {SLAB_BYTES}), ds_store {stores}, ds_load {loads}, global atomics {atomics}, "
          f"s_barrier {barriers}, scratch {scratch_b} bytes")
    failures = []
    if lds_b <= SLAB_BYTES:
        failures.append(f"LDS {lds_b} bytes: no room beside the {SLAB_BYTES}-byte slab for the per-slot partials")
    if stores == 0 or loads == 0:
        failures.append(f"ds_store {stores} / ds_load {loads}: the kernel does not stage through LDS")
    if atomics:
        failures.append(f"{atomics} global atomics: partials reduced through memory, not in LDS")
    if scratch_b != 0:
        failures.append(f"scratch {scratch_b} bytes (registers spilled, or no ScratchSize in hipcc's output)")
    return verdict(failures, f"the megakernel builds for gfx1100 with its partials in LDS ({lds_b} bytes, "
                             f"{stores} ds_store, {loads} ds_load, no atomics, no scratch)")


if __name__ == "__main__":
    raise SystemExit(main())
