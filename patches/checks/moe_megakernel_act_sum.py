"""Effect check for the `moe-megakernel-act-sum` entry: the MoE megakernel's bf16 dot no longer subtracts
the dequant offset 136 from each (128 + q) pair through fp32 and rounds it back to bf16; the offset leaves
once per chunk and row as one fma with -136 * the chunk's activation sum (the GEMV's int4_chunk_dot).

Exit 0: pass; 1: fail; 2: the check could not run (no vLLM, no hipcc).
"""
from __future__ import annotations

import re

from _cxx import gfx1100_isa, rocm_hip
from _scope import announce, verdict
from moe_int4_bf16_dequant import _count

COVERS = [
    "csrc/rocm/moe_megakernel.cuh of the tree compiled device-only for gfx1100 with hipcc at the tree's launch "
    "(moe_megakernel_cfg.h; bf16, group size 32, fused silu): the kernel's ISA has no per-weight fp32 subtract "
    "of the offset 136 (v_add_f32 with -136.0) and no per-weight round half to even (v_add3_u32 with 0x7fff), "
    "and has the per-chunk correction (an fma with -136.0) and the activation sums' v_dot2_f32_bf16",
]
CANNOT = [
    "the kernel's speed or the TPOT on gfx11 (no gfx11 GPU); gfx1151 (Debian's clang 15 cannot target "
    "it; gfx1100 runs the same dot); the fp16 path (unchanged by the entry)",
]
NEG_136 = "0xc3080000"  # fp32 -136.0


def instantiation(fuse_silu: bool) -> str:
    """The bf16 megakernel at the tree's launch (kMegaCfg), group size 32, an 8192-element LDS slab."""
    return ('#include "moe_megakernel.cuh"\n#include "moe_megakernel_cfg.h"\nnamespace vllm_moe_int4 {\n'
            "constexpr MegaCfg C = kMegaCfg;\n"
            "template __global__ void moe_megakernel_gemm2_reduce<bf16_t, C.thrds, C.ytile, C.wvprgrp, C.a_chunk, "
            f"C.unrl, 32, 8192, {'true' if fuse_silu else 'false'}>(int, int, const uint32_t*, const bf16_t*, "
            "const bf16_t*, const int32_t*, const float*, bf16_t*, int);\n}\n")


INST = instantiation(fuse_silu=True)


def launch(cfg_text: str) -> tuple[int, ...] | None:
    """(thrds, ytile, wvprgrp, a_chunk, unrl) of kMegaCfg in moe_megakernel_cfg.h."""
    m = re.search(r"kMegaCfg\s*=\s*\{\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\}", cfg_text)
    return tuple(int(g) for g in m.groups()) if m else None


def with_neg_136(isa: str, name: str) -> int:
    """Instructions `name` (a regex, VOPD halves too) with -136.0 as an operand."""
    return len(re.findall(rf"\bv_(?:dual_)?{name}(?:_e32|_e64)?\s+[^:\n]*{NEG_136}", isa))


def main() -> int:
    announce("moe-megakernel-act-sum", COVERS, CANNOT)
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
    _, ytile, waves, a_chunk, unrl = lc
    weights = ytile * unrl * a_chunk  # dequantised per step of the kernel's k loop
    isa = gfx1100_isa(hip, INST, rocm, what="bf16 megakernel", prefix="vpatch-mega-act-sum-")
    if isinstance(isa, int):
        return isa
    sub = with_neg_136(isa, "add_f32") + with_neg_136(isa, "sub_f32")
    rtne = len(re.findall(r"\bv_add3_u32(?:_e64)?\s+[^\n]*0x7fff\b", isa))
    fma = with_neg_136(isa, "fmac_f32") + with_neg_136(isa, "fma_f32") + with_neg_136(isa, "fmamk_f32")
    dot2 = _count(isa, "dot2_f32_bf16")
    print(f"gfx1100 bf16 megakernel ({waves} waves, A_CHUNK {a_chunk}, YTILE {ytile}, UNRL {unrl}: {weights} "
          f"weights per k step): fp32 subtracts of 136 {sub}, round-half-even adds (v_add3_u32 0x7fff) {rtne}, "
          f"fmas with -136 {fma}, v_dot2_f32_bf16 {dot2}")
    # Subtracting the offset from each dequantised half costs an fp32 add with -136 and a round half to even
    # per weight; the correction costs one fma per (k2, row) and A_CHUNK / 2 dots per k2 for the sum.
    # A quarter of the weights leaves room on both sides.
    failures = []
    if sub >= weights // 4:
        failures.append(f"{sub} fp32 subtracts of 136 for {weights} weights per step: the offset leaves per pair")
    if rtne >= weights // 4:
        failures.append(f"{rtne} RTNE adds for {weights} weights per step: each subtracted pair is rounded to bf16")
    if fma == 0:
        failures.append("no fma with -136: no activation-sum correction")
    if dot2 < weights // 2 + unrl * a_chunk // 2:
        failures.append(f"{dot2} v_dot2_f32_bf16, fewer than the {weights // 2} pairs' and the "
                        f"{unrl * a_chunk // 2} activation-sum dots")
    return verdict(failures, f"the megakernel's bf16 dot removes the offset with the activation sum ({fma} fmas "
                             f"with -136, {sub} per-pair subtracts, {rtne} RTNE adds, {dot2} v_dot2_f32_bf16)")


if __name__ == "__main__":
    raise SystemExit(main())
