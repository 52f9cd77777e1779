"""Effect check for the `moe-int4-dot2` entry: the bf16 MoE int4 GEMV does its dot products with the
packed gfx11 instruction v_dot2_f32_bf16 instead of a scalar fp32 chain.

Exit 0: pass; 1: fail; 2: the check could not run (no vLLM, no hipcc).
"""
from __future__ import annotations

import re

from _cxx import gfx1100_isa, rocm_hip
from _scope import announce, verdict

COVERS = [
    "csrc/rocm/moe_wvsplitk_int4.cuh of the tree compiled device-only for gfx1100 with hipcc at the "
    "decode design point (bf16, THRDS 32, YTILE 2, 4 waves, A_CHUNK 16, UNRL 4, group size 128): the "
    "kernel's ISA has v_dot2_f32_bf16, one per packed pair",
]
CANNOT = [
    "the kernel's speed on gfx11 (bench_moe_int4.py on a gfx11 GPU); gfx1151 (Debian's clang 15 "
    "cannot target it; gfx1100 has the same dot instructions)",
]
ARGS = ("(int,int,const uint32_t*,const bf16_t*,const bf16_t*,bf16_t*,const float*,const int32_t*,"
        "const int32_t*,const int32_t*,int,int,int)")
INST = ('#include "moe_wvsplitk_int4.cuh"\nnamespace vllm_moe_int4 {\n'
        f"template __global__ void moe_wvSplitK_int4_kernel<bf16_t,32,2,4,16,4,1,128,8192,true>{ARGS};\n}}\n")


def main() -> int:
    announce("moe-int4-dot2", COVERS, CANNOT)
    found = rocm_hip()
    if found is None:
        return 2
    rocm, hip = found
    header = rocm / "moe_wvsplitk_int4.cuh"
    if not header.is_file():
        return verdict([f"no {header.name} in {rocm}: the MoE int4 GEMV is not in this tree"], "")
    isa = gfx1100_isa(hip, INST, rocm, what="bf16 GEMV", prefix="vpatch-dot2-")
    if isinstance(isa, int):
        return isa
    dots = len(re.findall(r"^\s*v_dot2_f32_bf16\b", isa, re.M))
    muls = len(re.findall(r"\bv_(?:dual_)?(?:mul|fma|fmac)_f32(?:_e32|_e64)?\b", isa))
    print(f"gfx1100 bf16 GEMV: v_dot2_f32_bf16 {dots}, fp32 mul/fma/fmac (VOPD halves too) {muls}")
    failures = [] if dots > 0 else [
        f"the bf16 GEMV has no v_dot2_f32_bf16 ({muls} fp32 mul/fma/fmac): its dot is an fp32 chain"]
    return verdict(failures, f"the bf16 GEMV's dot is v_dot2_f32_bf16 ({dots} in the kernel)")


if __name__ == "__main__":
    raise SystemExit(main())
