"""Effect check for the `fused-moe-hybrid-prefill-tiles` entry: a prefill batch through the hybrid
W4A16 experts launches the shuffled Triton kernel with the per-shape tile -- gate_up (N=1536 on
Qwen3-Omni) BLOCK_N 32 / 2 warps / 2 stages, down (N=2048) BLOCK_N 128 / 4 warps / 1 stage,
BLOCK_K = min(group size, 64) -- instead of one static tile.

Run with the python of the workspace's python-only install (`vpatch verify` does).
Exit 0: pass; 1: fail; 2: the check could not run.
"""
from __future__ import annotations

import sys
import traceback

from _rocm import MoEProblem, env, import_with_stand_ins, rocm_arch, run_hybrid
from _scope import announce, verdict

COVERS = [
    "HybridW4A16MoEExperts.apply (the tree's code) at M = 64 on a ROCm gfx1151 stand-in with "
    "Qwen3-Omni's expert shapes (hidden 2048, intermediate 768, group size 128): the tile each "
    "Triton launch gets",
]
CANNOT = [
    "the speed of the tiles (no gfx11 GPU here: the TTFT and kernel claims are measured by validate)",
    "the Triton kernel run itself (a CPU stand-in computes the GEMM)",
]
EXPECTED = {  # output features -> tile
    1536: {"BLOCK_SIZE_N": 32, "num_warps": 2, "num_stages": 2, "BLOCK_SIZE_K": 64},
    2048: {"BLOCK_SIZE_N": 128, "num_warps": 4, "num_stages": 1, "BLOCK_SIZE_K": 64},
}


def main() -> int:
    announce("fused-moe-hybrid-prefill-tiles", COVERS, CANNOT)
    hyb = import_with_stand_ins("vllm.model_executor.layers.fused_moe.experts.hybrid_w4a16_moe",
                                "the hybrid W4A16 experts")
    if hyb is None:
        return 2
    failures: list[str] = []
    prob = MoEProblem(E=4, hidden=2048, inter=768, top_k=2, group_size=128)
    calls: list = []
    try:
        with rocm_arch("gfx1151"), env(VLLM_MOE_HIP_MEGAKERNEL="0"):
            run_hybrid(hyb, prob, 64, triton_calls=calls)
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: the experts call raised {type(e).__name__}: {e}")
        return 2
    seen = {c["N"]: c["config"] for c in calls}
    for n, want in EXPECTED.items():
        got = seen.get(n)
        sub = {k: (got or {}).get(k) for k in want}
        print(f"  N={n}: {sub} (expected {want})")
        if sub != want:
            failures.append(f"N={n}: tile {sub}, expected {want}")
    bm = {c["config"].get("BLOCK_SIZE_M") for c in calls}
    print(f"  BLOCK_SIZE_M of both GEMMs: {sorted(bm)} (one align block feeds both)")
    if len(bm) != 1:
        failures.append(f"the two GEMMs use different BLOCK_SIZE_M {sorted(bm)}")
    return verdict(failures, "prefill GEMMs get their per-shape tiles")


if __name__ == "__main__":
    sys.exit(main())
