"""Effect check for the `moe-int4-bf16-dequant` entry: the bf16 MoE int4 GEMV dequantises its weights
marlin-style (one mask 0x000F000F and the bf16 magic number 0x4300 per packed pair, a v_and_or_b32)
instead of one nibble at a time (a 4-bit v_bfe_u32 and an int -> fp32 convert per nibble).

Exit 0: pass; 1: fail; 2: the check could not run (no vLLM, no hipcc).
"""
from __future__ import annotations

import re

from _cxx import gfx1100_isa, rocm_hip
from _scope import announce, verdict

COVERS = [
    "csrc/rocm/moe_wvsplitk_int4.cuh of the tree compiled device-only for gfx1100 with hipcc at the "
    "decode design point (bf16, THRDS 32, YTILE 2, 4 waves, A_CHUNK 16, UNRL 4, group size 128): the "
    "kernel's ISA has no per-nibble extraction (4-bit v_bfe_u32) and no per-nibble int -> fp32 convert left, "
    "and builds its (128 + q) pairs with v_and_or_b32",
]
CANNOT = [
    "the kernel's speed or the TPOT on gfx11 (no gfx11 GPU); gfx1151 (Debian's clang 15 cannot target "
    "it; gfx1100 runs the same dequant code)",
]
YTILE, A_CHUNK, UNRL = 2, 16, 4
NIBBLES = YTILE * UNRL * A_CHUNK  # weights dequantised per step of the kernel's k loop
ARGS = ("(int,int,const uint32_t*,const bf16_t*,const bf16_t*,bf16_t*,const float*,const int32_t*,"
        "const int32_t*,const int32_t*,int,int,int)")
INST = ('#include "moe_wvsplitk_int4.cuh"\nnamespace vllm_moe_int4 {\n'
        f"template __global__ void moe_wvSplitK_int4_kernel<bf16_t,32,{YTILE},4,{A_CHUNK},{UNRL},1,128,8192,true>"
        f"{ARGS};\n}}\n")


def _count(isa: str, name: str) -> int:
    """Instructions `name` (a regex; its _e32 / _e64 encodings and the halves of a gfx11 VOPD pair too)."""
    return len(re.findall(rf"\bv_(?:dual_)?{name}(?:_e32|_e64)?\b", isa))


def nibble_extracts(isa: str) -> int:
    """v_bfe_u32 of a 4-bit field: a nibble extracted on its own. (A 1-bit one at offset 16 is the round
    to nearest even of an fp32 -> bf16 pack, see moe_int4_bf16_sub_nocanon.py; wider ones are index math.)"""
    return len(re.findall(r"\bv_bfe_u32(?:_e64)?\s+v\d+,\s*[^,]+,\s*[^,]+,\s*4\b", isa))


def main() -> int:
    announce("moe-int4-bf16-dequant", COVERS, CANNOT)
    found = rocm_hip()
    if found is None:
        return 2
    rocm, hip = found
    header = rocm / "moe_wvsplitk_int4.cuh"
    if not header.is_file():
        return verdict([f"no {header.name} in {rocm}: the MoE int4 GEMV is not in this tree"], "")
    isa = gfx1100_isa(hip, INST, rocm, what="bf16 GEMV", prefix="vpatch-bf16-dequant-")
    if isinstance(isa, int):
        return isa
    bfe = _count(isa, "bfe_u32")
    nib = nibble_extracts(isa)
    cvt = _count(isa, r"cvt_f32_(?:i32|ubyte[0-3])")
    and_or = _count(isa, "and_or_b32")
    print(f"gfx1100 bf16 GEMV ({NIBBLES} weights per k step): v_bfe_u32 {bfe} (4-bit fields {nib}), "
          f"int -> fp32 converts {cvt}, v_and_or_b32 {and_or}")
    # The scalar dequant spends one extraction and one convert on each weight; the marlin-style one a
    # v_and_or_b32 per pair and a shift per word. A quarter of the weights leaves room on both sides.
    failures = []
    if nib >= NIBBLES // 4:
        failures.append(f"{nib} 4-bit v_bfe_u32 for {NIBBLES} weights per step: the nibbles are extracted one at a "
                        "time")
    if cvt >= NIBBLES // 4:
        failures.append(f"{cvt} int -> fp32 converts for {NIBBLES} weights per step: each nibble is converted")
    if and_or == 0:
        failures.append("no v_and_or_b32: no (q & 0x000F000F) | 0x43004300 pair construction")
    return verdict(failures, f"the bf16 GEMV dequantises marlin-style ({and_or} v_and_or_b32, "
                             f"{nib} 4-bit v_bfe_u32, {cvt} converts)")


if __name__ == "__main__":
    raise SystemExit(main())
