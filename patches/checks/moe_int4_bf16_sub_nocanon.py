"""Effect check for the `moe-int4-bf16-sub-nocanon` entry: the bf16 MoE int4 GEMV no longer subtracts
the dequant offset from each (128 + q) pair through fp32 and packs the result back to bf16 with a NaN
test (NaN canonicalisation) and round to nearest even; the offset leaves once per chunk instead.

Exit 0: pass; 1: fail; 2: the check could not run (no vLLM, no hipcc).
"""
from __future__ import annotations

import re

from _cxx import gfx1100_isa, rocm_hip
from _scope import announce, verdict
from moe_int4_bf16_dequant import INST, NIBBLES, _count

COVERS = [
    "csrc/rocm/moe_wvsplitk_int4.cuh of the tree compiled device-only for gfx1100 with hipcc at the "
    "decode design point (bf16, THRDS 32, YTILE 2, 4 waves, A_CHUNK 16, UNRL 4, group size 128): the "
    "kernel's ISA has no per-weight NaN test (v_cmp against 0x7f800001, or v_cmp_u_f32 / v_cmp_class_f32) "
    "and no per-weight round to nearest even (v_add3_u32 with 0x7fff) left from packing fp32 back to bf16",
]
CANNOT = [
    "the kernel's speed or the TPOT on gfx11 (no gfx11 GPU); gfx1151 (Debian's clang 15 cannot target "
    "it; gfx1100 runs the same dequant code); clang 15 lowers the NaN test of the pack to an integer "
    "compare and a branch, newer clang (the seed's) to v_cmp_u_f32 and v_cndmask_b32: both are counted",
]


def nan_tests(isa: str) -> int:
    """Compares that ask whether an fp32 value is a NaN: |x| as bits above 0x7f800000, unordered, or by class."""
    return (len(re.findall(r"\bv_(?:dual_)?cmp_[a-z]+_u32(?:_e32|_e64)?\s+[^\n]*0x7f800001", isa))
            + _count(isa, "cmp_u_f32") + _count(isa, "cmp_class_f32"))


def main() -> int:
    announce("moe-int4-bf16-sub-nocanon", COVERS, CANNOT)
    found = rocm_hip()
    if found is None:
        return 2
    rocm, hip = found
    header = rocm / "moe_wvsplitk_int4.cuh"
    if not header.is_file():
        return verdict([f"no {header.name} in {rocm}: the MoE int4 GEMV is not in this tree"], "")
    isa = gfx1100_isa(hip, INST, rocm, what="bf16 GEMV", prefix="vpatch-bf16-sub-nocanon-")
    if isinstance(isa, int):
        return isa
    nan = nan_tests(isa)
    rtne = len(re.findall(r"\bv_add3_u32(?:_e64)?\s+[^\n]*0x7fff\b", isa))
    print(f"gfx1100 bf16 GEMV ({NIBBLES} weights per k step): NaN tests {nan}, round-to-nearest-even adds "
          f"(v_add3_u32 0x7fff) {rtne}")
    # Packing each dequantised weight back to bf16 costs a NaN test and an RTNE add per weight (128 a
    # step); the output rows' own pack (YTILE of them, once per kernel) stays. A quarter of the weights
    # leaves room on both sides.
    failures = []
    if nan >= NIBBLES // 4:
        failures.append(f"{nan} NaN tests for {NIBBLES} weights per step: each subtracted pair is NaN-canonicalised")
    if rtne >= NIBBLES // 4:
        failures.append(f"{rtne} RTNE adds for {NIBBLES} weights per step: each subtracted pair is rounded to bf16")
    return verdict(failures, f"no per-pair bf16 subtract in the bf16 GEMV ({nan} NaN tests, {rtne} RTNE adds, "
                             f"the output's pack)")


if __name__ == "__main__":
    raise SystemExit(main())
