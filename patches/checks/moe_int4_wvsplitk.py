"""Effect check for the `moe-int4-wvsplitk` entry: the fused MoE int4 GEMV is declared to vLLM --
_rocm_C registers moe_wvSplitK_int4_gemm with the schema its Python wrapper calls, the wrapper in
vllm._custom_ops passes every argument through in order, and CMake builds its source.

Exit 0: pass; 1: fail; 2: the check could not run.
"""
from __future__ import annotations

import re
import sys
import traceback

from _cxx import vllm_tree
from _rocm import MoEProblem, RocmOps, moe_align_block_size_ref
from _scope import announce, verdict

COVERS = [
    "csrc/rocm/torch_bindings.cpp of the tree: the op's schema, compared with the one this check "
    "registers; CMakeLists.txt lists csrc/rocm/moe_wvsplitk_int4.cu",
    "vllm._custom_ops.moe_wvSplitK_int4_gemm (the tree's wrapper) called for a GEMM1 and a GEMM2 of a "
    "small MoE: through torch.ops._rocm_C into a CPU stand-in of the op, result against fp32",
]
CANNOT = [
    "the HIP kernel (no gfx11 GPU): vpatch's gfx1100 device build compiles it, its host-arithmetic "
    "mirror checks the index math; nothing in vLLM calls the op before fused-moe-hybrid-w4a16",
]


def main() -> int:
    announce("moe-int4-wvsplitk", COVERS, CANNOT)
    try:
        import torch

        tree = vllm_tree()
        RocmOps.install()
        import vllm._custom_ops as ops
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: cannot import vLLM's _custom_ops: {type(e).__name__}: {e}")
        return 2
    failures: list[str] = []
    bindings = (tree / "csrc" / "rocm" / "torch_bindings.cpp").read_text()
    m = re.search(r'"(moe_wvSplitK_int4_gemm\(.*?\) -> \(\))"\);', bindings.replace('"\n      "', ""), re.S)
    schema = " ".join(m.group(1).split()) if m else None
    want = " ".join(RocmOps.SCHEMAS["moe_wvSplitK_int4_gemm"].split())
    print(f"  _rocm_C schema in torch_bindings.cpp: {schema}")
    if schema != want:
        failures.append(f"torch_bindings.cpp registers {schema!r}, expected {want!r}")
    cmake = (tree / "CMakeLists.txt").read_text()
    built = '"csrc/rocm/moe_wvsplitk_int4.cu"' in cmake
    print(f"  CMakeLists.txt builds csrc/rocm/moe_wvsplitk_int4.cu: {built}")
    if not built:
        failures.append("CMakeLists.txt does not build csrc/rocm/moe_wvsplitk_int4.cu")
    if not hasattr(ops, "moe_wvSplitK_int4_gemm"):
        failures.append("vllm._custom_ops has no moe_wvSplitK_int4_gemm")
        return verdict(failures, "")
    try:
        p = MoEProblem(E=4, hidden=128, inter=64, top_k=2, group_size=32)
        x, ids, tw = p.inputs(2)
        sid, eid, ntp = moe_align_block_size_ref(ids, 16, p.E)
        from _rocm import dequant_skinny

        w1 = dequant_skinny(p.w1, p.s1)
        ref1 = torch.stack([w1[int(ids[t, j])] @ x[t].float() for t in range(2) for j in range(2)])
        c1 = torch.zeros(4, 2 * p.inter, dtype=p.dtype)
        RocmOps.reset()
        ops.moe_wvSplitK_int4_gemm(x, c1, p.w1, p.s1, None, sid, eid, ntp, 2, 16, 32, 4)
        act = torch.randn(4, p.inter).to(p.dtype)
        w2 = dequant_skinny(p.w2, p.s2)
        ref2 = torch.stack([float(tw.flatten()[s]) * (w2[int(ids.flatten()[s])] @ act[s].float()) for s in range(4)])
        c2 = torch.zeros(4, p.hidden, dtype=p.dtype)
        ops.moe_wvSplitK_int4_gemm(act, c2, p.w2, p.s2, tw.float().flatten(), sid, eid, ntp, 2, 16, 32, 4)
        e1 = ((c1.float() - ref1).abs().max() / ref1.abs().max()).item()
        e2 = ((c2.float() - ref2).abs().max() / ref2.abs().max()).item()
        print(f"  wrapper -> torch.ops._rocm_C: {RocmOps.names()}; GEMM1 rel. error {e1:.2e}, "
              f"GEMM2 (router weights) {e2:.2e}")
        if RocmOps.names() != ["moe_wvSplitK_int4_gemm"] * 2:
            failures.append(f"the wrapper reached {RocmOps.names()}")
        if max(e1, e2) > 2e-2:
            failures.append(f"the wrapper's result is off the reference ({e1:.2e}, {e2:.2e}): arguments out of order?")
    except Exception as e:
        traceback.print_exc()
        failures.append(f"calling the wrapper raised {type(e).__name__}: {e}")
    return verdict(failures, "moe_wvSplitK_int4_gemm is registered, wrapped and built")


if __name__ == "__main__":
    sys.exit(main())
