#!/usr/bin/env python3
"""Kernel micro-benchmark of the dense entries' shapes (dense-wvsplitk-n1-tune, dense-w4a16-prefill-carveouts).

Prints one JSON line per (kernel, shape), the fork author's harness shapes:
  {"kernel": "dense_lm_head", "shape": "152064x2048", "unit": "us", "samples": [...]}
* dense_lm_head 152064x2048 and dense_router 128x2048: one activation row through the ROCm op
  wvSplitK (vllm._custom_ops.wvSplitK, the N=1 path whose launch dense-wvsplitk-n1-tune tunes), in us;
* dense_qkv_prefill 5120x2048 and dense_o_proj_prefill 2048x4096: M=128 rows, group size 32, through
  the Triton skinny W4A16 GEMM (triton_w4a16_skinny_fmt_gemm, whose tiles the carve-outs set), in ms.
`samples` are per-launch times from device events (default 200 after 40 warm-up launches).

Both entries change what runs only on gfx11 (the tuned launch on gfx1x wave32, the carve-outs in
the gfx1151 branch), so anywhere else the before/after pair is equal by construction: the script
needs an installed ROCm build of the prefix's vLLM on a gfx11 GPU, and otherwise says why in one line
and exits 77 (skip). `--kernels` picks a subset.
"""

from __future__ import annotations

import argparse
import json
import sys

SHAPES = {  # kernel -> (N out, K in, M rows, unit)
    "dense_lm_head": (152064, 2048, 1, "us"),
    "dense_router": (128, 2048, 1, "us"),
    "dense_qkv_prefill": (5120, 2048, 128, "ms"),
    "dense_o_proj_prefill": (2048, 4096, 128, "ms"),
}
GROUP_SIZE = 32  # the carve-outs' shapes are Qwen3-Omni's attention projections at gs 32


def _skip(msg: str) -> int:
    print(f"bench_dense: {msg}; skipping", file=sys.stderr)
    return 77


def _time(fn, iters: int, warmup: int, scale: float) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        out.append(round(s.elapsed_time(e) * scale, 4))  # elapsed_time is ms
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--kernels", default=",".join(SHAPES), help="comma-separated subset of " + ", ".join(SHAPES))
    a = ap.parse_args(argv)
    wanted = [k.strip() for k in a.kernels.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in SHAPES]
    if unknown:
        ap.error(f"unknown kernel(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")

    try:
        import torch
    except ImportError:
        return _skip("torch is not installed")
    if not torch.cuda.is_available() or not getattr(torch.version, "hip", None):
        return _skip("needs a ROCm GPU (the tuned launch and the carve-outs exist only on gfx11); none found")
    arch = torch.cuda.get_device_properties(0).gcnArchName.split(":")[0]
    if not arch.startswith("gfx11"):
        return _skip(f"this GPU is {arch}; both entries change what runs only on gfx11")
    try:
        import vllm._custom_ops as ops
        from vllm.model_executor.kernels.linear.mixed_precision import rdna_hybrid_w4a16 as rdna
    except ImportError as e:
        return _skip(f"no ROCm build of vLLM importable ({e})")

    dev, dt = "cuda", (torch.bfloat16 if a.dtype == "bf16" else torch.float16)
    cu = torch.cuda.get_device_properties(0).multi_processor_count
    g = torch.Generator(device=dev).manual_seed(0)
    for name in wanted:
        n, k, m, unit = SHAPES[name]
        if m == 1:  # wvSplitK(weight [N, K], activation [1, K])
            w = torch.randn(n, k, device=dev, dtype=dt, generator=g) * 0.02
            x = torch.randn(1, k, device=dev, dtype=dt, generator=g)
            samples = _time(lambda w=w, x=x: ops.wvSplitK(w, x, cu), a.iters, a.warmup, 1000.0)
        else:
            if arch != "gfx1151":
                print(f"bench_dense: {name}: the carve-outs sit in the gfx1151 branch, this GPU is {arch}; "
                      "timing the generic tiles", file=sys.stderr)
            q = torch.randint(0, 16, (n, k), device=dev, dtype=torch.uint8, generator=g)
            b_q = rdna.pack_int4_exllama_shuffle(q)
            scales = torch.rand(n, k // GROUP_SIZE, device=dev, dtype=dt, generator=g) * 0.01 + 0.001
            x = torch.randn(m, k, device=dev, dtype=dt, generator=g)
            samples = _time(lambda x=x, b_q=b_q, scales=scales: rdna.triton_w4a16_skinny_fmt_gemm(x, b_q, scales, GROUP_SIZE),
                            a.iters, a.warmup, 1.0)
        print(json.dumps({"kernel": name, "shape": f"{n}x{k}" if m == 1 else f"{m}x{n}x{k}", "unit": unit,
                          "samples": samples}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
