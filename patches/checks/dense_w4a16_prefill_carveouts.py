"""Effect check for the `dense-w4a16-prefill-carveouts` entry: on gfx1151, the dense W4A16
skinny-format Triton GEMM launches Qwen3-Omni's qkv_proj (5120x2048) and o_proj (2048x4096) at
M = 128, group size 32, with their carve-out tiles, and every other shape with the tile it had.

Exit 0: pass; 1: fail; 2: the check could not run.
"""
from __future__ import annotations

import sys
import traceback

from _rocm import patched
from _scope import announce, verdict

COVERS = [
    "triton_w4a16_skinny_fmt_gemm (the tree's code) on a gfx1151 stand-in: the tile (BLOCK_M, "
    "BLOCK_N, BLOCK_K, num_warps) its Triton launch gets for the two carve-out shapes and for "
    "Qwen3-4B / SmolLM2 shapes that must keep theirs, at M = 128 and M = 32",
]
CANNOT = [
    "the tiles' speed (no gfx11 GPU here: the TTFT and kernel claims are measured by validate)",
    "the Triton kernel run (a recorder takes the launch)",
]
# (M, N, K, group size) -> expected (BLOCK_M, BLOCK_N, BLOCK_K, num_warps)
CASES = {
    (128, 5120, 2048, 32): (64, 32, 32, 4),   # qkv_proj carve-out
    (128, 2048, 4096, 32): (32, 128, 32, 2),  # o_proj carve-out
    (128, 6144, 2560, 128): (64, 64, 64, 4),  # Qwen3-4B qkv: generic wide-N, unchanged
    (128, 2560, 9728, 128): (64, 16, 64, 1),  # Qwen3-4B down: generic tall-K, unchanged
    (32, 5120, 2048, 32): (32, 32, 32, 4),    # M <= 32 keeps its branch (BLOCK_K clamped to gs)
}


class Recorder:
    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.launches.append((kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], kw["num_warps"]))
        return launch


def main() -> int:
    announce("dense-w4a16-prefill-carveouts", COVERS, CANNOT)
    try:
        import torch

        import vllm.model_executor.kernels.linear.mixed_precision.rdna_hybrid_w4a16 as rdna
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: cannot import rdna_hybrid_w4a16: {type(e).__name__}: {e}")
        return 2
    failures: list[str] = []
    try:
        for (M, N, K, gs), want in CASES.items():
            rec = Recorder()
            a = torch.zeros(M, K, dtype=torch.float16)
            b = torch.zeros(N, K // 8, dtype=torch.int32)
            s = torch.zeros(N, K // gs, dtype=torch.float16)
            with patched(rdna, _on_gfx12x=lambda: False, _on_gfx1151=lambda: True,
                         _triton_w4a16_skinny_fmt_kernel=rec):
                rdna.triton_w4a16_skinny_fmt_gemm(a, b, s, gs)
            got = rec.launches[0]
            ok = got == want
            print(f"  M={M:3d} N={N:5d} K={K:5d} gs={gs:3d}: tile {got} (expected {want}) {'ok' if ok else 'WRONG'}")
            if not ok:
                failures.append(f"M={M} {N}x{K} gs={gs}: tile {got}, expected {want}")
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: the check crashed: {type(e).__name__}: {e}")
        return 2
    return verdict(failures, "qkv_proj and o_proj get their carve-out tiles; other shapes keep theirs")


if __name__ == "__main__":
    sys.exit(main())
