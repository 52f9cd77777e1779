"""Effect check for the `fused-moe-hybrid-w4a16` entry: on ROCm gfx1100/gfx1151 the WNA16 MoE
oracle puts the hybrid backend first (other ROCm GPUs only with VLLM_MOE_HYBRID_W4A16=1), and the
hybrid experts send decode batches (M <= 5) to the HIP GEMV op and larger batches to the shuffled
Triton kernel, with the router weights handed to the HIP op as float32.

Run with the python of the workspace's python-only install (`vpatch verify` does).
Exit 0: pass; 1: fail; 2: the check could not run.
"""
from __future__ import annotations

import sys
import traceback

from _rocm import MoEProblem, RocmOps, env, import_with_stand_ins, patched, rocm_arch, rocm_platform, run_hybrid
from _scope import announce, verdict

COVERS = [
    "the WNA16 MoE oracle's backend priority (the tree's _get_priority_backends) on a ROCm stand-in "
    "for gfx1151, gfx1100, gfx942 and gfx1201, with VLLM_MOE_HYBRID_W4A16 unset, 1 and 0",
    "HybridW4A16MoEExperts.apply (the tree's code) at M = 1, 5, 6 and 32: which GEMM runs, through "
    "vLLM's own _custom_ops wrapper into torch.ops._rocm_C (registered here with the entry's schema)",
    "the HIP op's float32 contract for the router weights (bf16 weights given) and the result of the "
    "whole experts call against an fp32 reference",
]
CANNOT = [
    "the HIP and Triton kernels themselves (no gfx11 GPU here): the op is a CPU stand-in computing "
    "its documented result; vpatch's kernel tests and the gfx1100 device build cover the kernels",
    "a real ROCm platform object (vllm.platforms.rocm needs ROCm torch): stand-ins answer for the arch",
]


def main() -> int:
    announce("fused-moe-hybrid-w4a16", COVERS, CANNOT)
    oracle = import_with_stand_ins("vllm.model_executor.layers.fused_moe.oracle.int_wna16", "the WNA16 MoE oracle")
    if oracle is None:
        return 2
    import torch
    failures: list[str] = []
    backend = getattr(oracle.WNA16MoEBackend, "HYBRID_W4A16", None)
    if backend is None:
        return verdict(["the WNA16 MoE oracle has no HYBRID_W4A16 backend"], "")
    cases = [  # arch, VLLM_MOE_HYBRID_W4A16, hybrid first?
        ("gfx1151", None, True), ("gfx1100", None, True), ("gfx942", None, False),
        ("gfx1201", None, False), ("gfx942", "1", True), ("gfx1151", "0", False),
    ]
    for arch, value, expected in cases:
        with rocm_arch(arch), env(VLLM_MOE_HYBRID_W4A16=value), \
                patched(oracle, current_platform=rocm_platform()):
            order = oracle._get_priority_backends()
        first = order[0] is backend
        print(f"  oracle on {arch:7s} VLLM_MOE_HYBRID_W4A16={value or 'unset':5s}: "
              f"{[b.name for b in order][:3]} -> hybrid first: {first} (expected {expected})")
        if first != expected:
            failures.append(f"{arch} with VLLM_MOE_HYBRID_W4A16={value or 'unset'}: hybrid first is {first}, "
                            f"expected {expected}")
    try:
        import vllm.model_executor.layers.fused_moe.experts.hybrid_w4a16_moe as hyb
    except Exception as e:
        traceback.print_exc()
        failures.append(f"the hybrid experts module does not import: {type(e).__name__}: {e}")
        return verdict(failures, "")
    prob = MoEProblem()
    for tokens, want in ((1, "hip"), (5, "hip"), (6, "triton"), (32, "triton")):
        RocmOps.reset()
        triton_calls: list = []
        try:
            with rocm_arch("gfx1151"), env(VLLM_MOE_HIP_MEGAKERNEL="0"):
                out, ref = run_hybrid(hyb, prob, tokens, weights_dtype=torch.bfloat16, triton_calls=triton_calls)
        except Exception as e:
            traceback.print_exc()
            failures.append(f"M={tokens}: the experts call raised {type(e).__name__}: {e}")
            continue
        hip = RocmOps.names().count("moe_wvSplitK_int4_gemm")
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        print(f"  M={tokens:2d}: HIP GEMV calls {hip}, Triton calls {len(triton_calls)} "
              f"(shuffled: {all(c['use_shuffle_w4a16'] for c in triton_calls)}), "
              f"max rel. error vs fp32 {err:.2e}")
        got = "hip" if hip == 2 and not triton_calls else "triton" if len(triton_calls) == 2 and not hip else "mixed"
        if got != want:
            failures.append(f"M={tokens}: dispatched to {got}, expected {want}")
        if err > 2e-2:
            failures.append(f"M={tokens}: result off the fp32 reference by {err:.2e}")
    return verdict(failures, "gfx1100/gfx1151 pick the hybrid backend (others opt in); M <= 5 runs the "
                             "HIP GEMV, larger M the shuffled Triton kernel")


if __name__ == "__main__":
    sys.exit(main())
