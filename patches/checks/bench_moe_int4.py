#!/usr/bin/env python3
"""Kernel micro-benchmark of the int4 MoE decode GEMMs (entry moe-int4-wvsplitk).

Prints one JSON line per (kernel, shape):
  {"kernel": "moe_gemm1", "shape": "1536x2048", "unit": "us", "samples": [...], ...}
`samples` are per-iteration times (default 200 iterations, each a CUDA-graph replay of one
launch timed with device events, routed over rotating expert sets so the weights come from
memory rather than L2); the fork's harness reported their median.

Kernels: `moe_gemm1` / `moe_gemm2` time the HIP op moe_wvSplitK_int4_gemm when the build
has it (ROCm), else the series' Triton kernel (fused_moe_kernel_gptq_awq with
use_shuffle_w4a16); `--compare` adds `triton_shuffle_*` and `triton_upstream_*` (the
unshuffled [E, N, K/2] uint8 layout, same tiles) lines.

The Triton kernel comes from the installed (patched) vLLM when it has use_shuffle_w4a16,
else from `--fused-moe PATH` / $VPATCH_VLLM_TREE, cut out without importing vLLM.
Without a GPU it says so and exits 77 (skip).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
SHAPES = {  # kernel -> (N out, K in, A rows per slot): Qwen3-Omni-30B-A3B, E=128, top-k 8
    "moe_gemm1": (1536, 2048, "token"),
    "moe_gemm2": (2048, 768, "slot"),
}


def _ref_module():
    """vpatch.validation.w4a16_ref, installed or from this checkout (needs only torch)."""
    try:
        from vpatch.validation import w4a16_ref
        return w4a16_ref
    except ImportError:
        import importlib.util

        path = HERE.parents[2] / "validation" / "w4a16_ref.py"
        spec = importlib.util.spec_from_file_location("w4a16_ref", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod


def _kernels(R, fused_moe: str | None):
    try:
        from vllm.model_executor.layers.fused_moe import fused_moe as fm

        if "use_shuffle_w4a16" in fm.fused_moe_kernel_gptq_awq.arg_names:
            return fm, "vllm"
    except Exception:  # noqa: BLE001 - no (patched) vLLM: fall back to the file
        pass
    path = fused_moe or (os.environ.get("VPATCH_VLLM_TREE") and
                         str(Path(os.environ["VPATCH_VLLM_TREE"]) / R.KERNEL_PATHS[0]))
    if not path:
        sys.exit("bench_moe_int4: no patched vLLM importable; pass --fused-moe PATH or set VPATCH_VLLM_TREE")
    return R.load_triton_kernels(path), path


def _time(fn, iters: int, warmup: int, graph: bool, rotations: int):
    import torch

    for r in range(rotations):
        for _ in range(max(1, warmup // rotations)):
            fn(r)
    torch.cuda.synchronize()
    runners = []
    for r in range(rotations):
        if graph:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn(r)
            torch.cuda.current_stream().wait_stream(s)
            with torch.cuda.graph(g):
                fn(r)
            runners.append(g.replay)
        else:
            runners.append(lambda r=r: fn(r))
    for r in range(rotations):
        runners[r]()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        runners[i % rotations]()
        ends[i].record()
    torch.cuda.synchronize()
    return [round(s.elapsed_time(e) * 1000.0, 3) for s, e in zip(starts, ends, strict=True)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=1, help="decode batch (M)")
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--rotations", type=int, default=8, help="expert sets cycled to defeat L2 reuse")
    ap.add_argument("--eager", action="store_true", help="time plain launches instead of graph replays")
    ap.add_argument("--compare", action="store_true", help="also time the Triton shuffled and upstream kernels")
    ap.add_argument("--fused-moe", help="a patched fused_moe.py to take the Triton kernel from")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    a = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_moe_int4: needs a GPU (ROCm gfx11 for the HIP kernel); none found, skipping",
              file=sys.stderr)
        return 77
    R = _ref_module()
    kern, kern_src = _kernels(R, a.fused_moe)
    dev = "cuda"
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    hip_op = getattr(getattr(torch.ops, "_rocm_C", None), "moe_wvSplitK_int4_gemm", None)
    cu = torch.cuda.get_device_properties(0).multi_processor_count
    E, top_k, T, G = a.experts, a.top_k, a.tokens, a.group_size
    gen = torch.Generator().manual_seed(0)
    lines = []

    for name, (N, K, rows) in SHAPES.items():
        # Random packed words are valid random int4 weights: build them on the device.
        torch.manual_seed(N + K)
        w_shuf = torch.randint(-2**31, 2**31 - 1, (E, N, K // 8), dtype=torch.int32, device=dev)
        s_dev = (torch.rand(E, N, K // G, device=dev) * 0.02 + 0.005).to(dtype)
        w_up = torch.empty(E, N, K // 2, dtype=torch.uint8, device=dev)
        for e in range(E):  # the same weights in the upstream [E, N, K/2] uint8 layout
            q = R.unpack_skinny_shuffled(w_shuf[e:e + 1])
            w_up[e] = (q[0, :, 0::2] | (q[0, :, 1::2] << 4)).to(torch.uint8)
        # disjoint expert sets, one per rotation
        perm = torch.randperm(E, generator=gen)
        sets = []
        for r in range(a.rotations):
            ids = torch.stack([perm[(r * top_k + torch.arange(top_k)) % E].roll(t) for t in range(T)])
            ids = ids.to(torch.int32)
            sid, eid, ntp = R.moe_align_block_size_ref(ids, 16, E)
            sets.append((ids, sid.to(dev), eid.to(dev), ntp.to(dev)))
        a_rows = T if rows == "token" else T * top_k
        x = torch.randn(a_rows, K, generator=gen).to(dtype).to(dev)
        tk = top_k if rows == "token" else 1
        cfg = R.triton_moe_config(N, G, block_m=16)
        nw, ns = cfg.pop("num_warps"), cfg.pop("num_stages")
        c = torch.empty(T, top_k, N, dtype=dtype, device=dev)

        def triton_fn(r, shuffle=True):
            _, sid, eid, ntp = sets[r]  # noqa: B023 (called within this iteration)
            R.run_triton_moe_gemm(kern, x, w_shuf if shuffle else w_up, s_dev, c, sid, eid, ntp, tk, G,  # noqa: B023 (called within this iteration)
                                  {**cfg, "num_warps": nw, "num_stages": ns}, shuffle=shuffle)  # noqa: B023 (called within this iteration)

        def hip_fn(r):
            _, sid, eid, ntp = sets[r]  # noqa: B023 (called within this iteration)
            hip_op(x, c.view(-1, N), w_shuf, s_dev, None, sid, eid, ntp, top_k, 16, G, cu)  # noqa: B023 (called within this iteration)

        variants = {name: hip_fn if hip_op is not None else triton_fn}
        if a.compare:
            variants[f"triton_shuffle_{name}"] = triton_fn
            variants[f"triton_upstream_{name}"] = lambda r: triton_fn(r, shuffle=False)
        for kname, fn in variants.items():
            # correctness on rotation 0 first (poisoned output)
            c.fill_(float("nan"))
            fn(0)
            torch.cuda.synchronize()
            ids0 = sets[0][0]
            used = sorted(set(ids0.flatten().tolist()))
            w_ref = torch.zeros(E, N, K)
            w_ref[used] = R.dequant_skinny(w_shuf[used].cpu(), s_dev[used].cpu(), G)
            ref = R.moe_gemm_ref(x.cpu(), w_ref, ids0, a_per_slot=(rows == "slot"))
            got = c.view(-1, N).float().cpu()
            rel = float((got - ref).norm() / ref.norm())
            samples = _time(fn, a.iters, a.warmup, not a.eager, a.rotations)
            impl = "hip" if (kname == name and hip_op is not None) else "triton"
            line = {"kernel": kname, "shape": f"{N}x{K}", "unit": "us", "samples": samples,
                    "median": statistics.median(samples), "impl": impl, "rel_err": rel,
                    "device": torch.cuda.get_device_name(0), "dtype": a.dtype, "group_size": G,
                    "tokens": T, "mode": "eager" if a.eager else "graph", "kernel_source": str(kern_src)}
            lines.append(line)
            print(json.dumps(line), flush=True)
    if a.out:
        with open(a.out, "a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
    return 0 if all(ln["rel_err"] < 2e-2 for ln in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
