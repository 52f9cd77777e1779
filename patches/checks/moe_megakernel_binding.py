"""Effect check for the `moe-megakernel-binding` entry: with VLLM_MOE_HIP_MEGAKERNEL=1 a single
decode token through the hybrid W4A16 experts reaches the megakernel op (GEMM2 + silu + top-k
reduce in one launch) instead of the GEMM2 + moe_sum chain; expert_map's -1 ids reach it as -1;
shapes the op would refuse fall back to the chain; without the variable nothing changes.

Exit 0: pass; 1: fail; 2: the check could not run.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from _rocm import MoEProblem, RocmOps, env, import_with_stand_ins, rocm_arch, run_hybrid
from _scope import announce, verdict

COVERS = [
    "HybridW4A16MoEExperts.apply (the tree's code) on a ROCm gfx1151 stand-in, through vLLM's own "
    "_custom_ops wrappers into torch.ops._rocm_C (registered here with the entries' schemas): which "
    "ops run for M = 1 and M = 2, with VLLM_MOE_HIP_MEGAKERNEL 1 and 0",
    "expert parallelism: an expert_map with experts on another rank (ids -1 reach the op, the result "
    "leaves those experts out), and an intermediate size above the op's 8192-element LDS slab (falls back)",
    "the result of the whole experts call against an fp32 reference",
]
CANNOT = [
    "the megakernel itself (no gfx11 GPU): the op is a CPU stand-in computing its documented result; "
    "vpatch's kernel tests mirror its m-stripes and the gfx1100 device build compiles it",
]


def run(prob, tokens, value, expert_map=None, inputs=None):
    import torch

    RocmOps.reset()
    with rocm_arch("gfx1151"), env(VLLM_MOE_HIP_MEGAKERNEL=value):
        out, ref = run_hybrid(hyb_mod, prob, tokens, weights_dtype=torch.bfloat16, expert_map=expert_map,
                              seed_inputs=inputs)
    err = ((out - ref).abs().max() / ref.abs().max().clamp(min=1e-6)).item()
    return RocmOps.names(), err, [c for n, c in RocmOps.calls if n == "moe_megakernel_gemm2"]


def main(argv=None) -> int:
    global hyb_mod
    ap = argparse.ArgumentParser()
    ap.add_argument("--fuse-silu", action="store_true",
                    help="expect silu(gate)*up folded into the launch (moe-megakernel-fuse-silu)")
    args = ap.parse_args(argv)
    announce("moe-megakernel-binding" + (" (silu fused)" if args.fuse_silu else ""), COVERS, CANNOT)
    hyb_mod = import_with_stand_ins("vllm.model_executor.layers.fused_moe.experts.hybrid_w4a16_moe",
                                    "the hybrid W4A16 experts")
    if hyb_mod is None:
        return 2
    import torch
    failures: list[str] = []
    try:
        prob = MoEProblem()
        for tokens, value, want in ((1, "1", True), (1, "0", False), (2, "1", False)):
            names, err, mega = run(prob, tokens, value)
            print(f"  M={tokens} VLLM_MOE_HIP_MEGAKERNEL={value}: ops {names}, max rel. error {err:.2e}")
            if bool(mega) != want:
                failures.append(f"M={tokens}, VLLM_MOE_HIP_MEGAKERNEL={value}: megakernel "
                                f"{'not ' if want else ''}reached")
            if mega and args.fuse_silu:
                print(f"    silu(gate)*up folded into the launch: {mega[0]['fuse_silu']}")
                if not mega[0]["fuse_silu"]:
                    failures.append("the megakernel is launched with fuse_silu=False (silu runs separately)")
            if err > 2e-2:
                failures.append(f"M={tokens}, VLLM_MOE_HIP_MEGAKERNEL={value}: result off by {err:.2e}")
        # expert parallel: experts 4..7 live on another rank
        emap = torch.tensor([0, 1, 2, 3, -1, -1, -1, -1], dtype=torch.int32)
        x = torch.randn(1, prob.hidden).to(prob.dtype)
        ids = torch.tensor([[1, 6]], dtype=torch.int32)
        tw = torch.tensor([[0.7, 0.3]], dtype=torch.bfloat16)
        names, err, mega = run(prob, 1, "1", expert_map=emap, inputs=(x, ids, tw))
        passed = mega[0]["ids"] if mega else None
        print(f"  expert_map, global ids [1, 6] -> ids given to the megakernel {passed}, "
              f"max rel. error {err:.2e}")
        if passed != [1, -1]:
            failures.append(f"expert_map: the megakernel got ids {passed}, expected [1, -1]")
        if err > 2e-2:
            failures.append(f"expert_map: result off by {err:.2e}")
        fits = MoEProblem(inter=96, group_size=32)  # a multiple of 32 within the LDS slab: megakernel
        wide = MoEProblem(E=2, hidden=64, inter=8320, group_size=64)  # above the 8192-element slab
        for p, want in ((fits, True), (wide, False)):
            try:
                names, err, mega = run(p, 1, "1")
                print(f"  intermediate {p.inter}, group size {p.gs}: megakernel {'used' if mega else 'not used'}"
                      f" (expected {'used' if want else 'the chain'}), max rel. error {err:.2e}")
                if bool(mega) != want:
                    failures.append(f"intermediate {p.inter}: megakernel {'not ' if want else ''}used")
            except Exception as e:
                failures.append(f"intermediate {p.inter}, group size {p.gs}: raised {type(e).__name__}: {e}")
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: the check crashed: {type(e).__name__}: {e}")
        return 2
    return verdict(failures, "VLLM_MOE_HIP_MEGAKERNEL=1 reaches the megakernel for one token, honours "
                             "expert_map, falls back where the op would refuse")


if __name__ == "__main__":
    sys.exit(main())
