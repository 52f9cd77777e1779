#!/usr/bin/env python3
"""The series' shuffled-W4A16 Triton MoE kernel on a real GPU: numerics against fp64, and speed
against the upstream int4 layout measured in the same run.

The kernel is the exact code of the patched tree's fused_moe.py (cut out without importing
vLLM, as the CPU tests do), compiled by Triton for whatever GPU is present (the fork's target is
gfx11; on a CUDA GPU this checks the kernel's math and the relative cost of the one-copy
shuffled layout, not gfx11 speed).

1. numerics: Qwen3-Omni-30B-A3B's expert GEMMs (E=128, top-k 8; gate_up N=1536/K=2048, down
   N=2048/K=768), M = 1 and 128 tokens, bf16 and fp16, group sizes 128 and 32: the kernel's
   output against an fp64 reference of the same dequantised weights (relative Frobenius error and
   max abs error over max |ref|).
2. speed: for each (shape, M, dtype) the shuffled kernel (`use_shuffle_w4a16`, skinny
   [E, N, K/8] int32) and the upstream layout ([E, N, K/2] uint8, same kernel, same tiles),
   REPEATS rounds alternating A B A B, each round 200 CUDA-graph replays over 8 rotating expert
   sets (weights from memory, not L2); per round the median; the ratio shuffled / upstream per
   round, with its range and a sign test over the rounds.

    python benchmarks/bench_kernels_gpu.py --fused-moe TREE/vllm/model_executor/layers/fused_moe/fused_moe.py
Prints one JSON line per measurement and a table; exit 0 when every numerics case is within
tolerance, 1 otherwise, 77 without a GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SHAPES = {"gate_up": (1536, 2048, "token"), "down": (2048, 768, "slot")}
DEV = "cuda"


def _modules():
    from vpatch.validation import w4a16_ref as R

    sys.path.insert(0, str(HERE.parents[1] / "patches" / "checks"))
    import bench_moe_int4 as B

    return R, B


def _problem(R, torch, E, N, K, G, T, top_k, rows, dtype, rotations, seed):
    dev = DEV
    torch.manual_seed(seed)
    w = torch.randint(-2**31, 2**31 - 1, (E, N, K // 8), dtype=torch.int32, device=dev)
    s = (torch.rand(E, N, K // G, device=dev) * 0.02 + 0.005).to(dtype)
    q = R.unpack_skinny_shuffled(w)  # [E, N, K] int64 on the device
    w_up = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).to(torch.uint8).contiguous()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(E, generator=gen)
    sets = []
    bm = 16 if T <= 16 else 64
    for r in range(rotations):
        ids = torch.stack([perm[(r * top_k + torch.randperm(E, generator=gen)[:top_k]) % E] for _ in range(T)])
        ids = ids.to(torch.int32)
        sid, eid, ntp = R.moe_align_block_size_ref(ids, bm, E)
        sets.append((ids, sid.to(dev), eid.to(dev), ntp.to(dev)))
    a_rows = T if rows == "token" else T * top_k
    x = torch.randn(a_rows, K, generator=gen).to(dtype).to(dev)
    return w, s, q, w_up, sets, x, bm


def _interpreter_bf16_dot():
    """Triton's interpreter multiplies bf16 dot operands as raw uint16 (numpy has no bf16): upcast."""
    import triton.language as tl
    from triton.runtime import interpreter as interp

    B = interp.InterpreterBuilder
    orig = B.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return orig(self, a, b, d, input_precision, max_num_imprecise_acc)

    B.create_dot = create_dot


def numerics(R, kern, torch, a, out):
    results = []
    E, top_k = a.experts, a.top_k
    for name, (N, K, rows) in SHAPES.items():
        for T in a.numerics_tokens:
            for dt in ("bf16", "fp16"):
                for G in (128, 32):
                    dtype = torch.bfloat16 if dt == "bf16" else torch.float16
                    w, s, q, _, sets, x, bm = _problem(R, torch, E, N, K, G, T, top_k, rows, dtype, 1, N + K + T)
                    ids, sid, eid, ntp = sets[0]
                    tk = top_k if rows == "token" else 1
                    cfg = R.triton_moe_config(N, G, block_m=bm)
                    c = torch.full((T, top_k, N), float("nan"), dtype=dtype, device=DEV)
                    R.run_triton_moe_gemm(kern, x, w, s, c, sid, eid, ntp, tk, G, cfg)
                    if DEV == "cuda":
                        torch.cuda.synchronize()
                    used = sorted(set(ids.flatten().tolist()))
                    wd = torch.zeros(E, N, K, dtype=torch.float64)
                    sc = s[used].double().cpu().repeat_interleave(G, dim=-1)
                    wd[used] = (q[used].double().cpu() - 8.0) * sc
                    xd = x.double().cpu()
                    ref = torch.empty(T * top_k, N, dtype=torch.float64)
                    for t in range(T):
                        for j in range(top_k):
                            slot = t * top_k + j
                            ref[slot] = wd[int(ids[t, j])] @ (xd[slot] if rows == "slot" else xd[t])
                    got = c.view(-1, N).double().cpu()
                    rel = float((got - ref).norm() / ref.norm())
                    mx = float((got - ref).abs().max() / ref.abs().max())
                    ok = bool(torch.isfinite(got).all()) and rel < (1e-2 if dt == "bf16" else 2e-3)
                    line = {"what": "numerics", "gemm": name, "shape": f"{N}x{K}", "tokens": T, "dtype": dt,
                            "group_size": G, "rel_frobenius": rel, "max_abs_over_max_ref": mx, "ok": ok}
                    results.append(line)
                    print(json.dumps(line), flush=True)
                    out.write(json.dumps(line) + "\n")
    return results


def speed(R, B, kern, torch, a, out):
    rows_out = []
    E, top_k = a.experts, a.top_k
    for name, (N, K, rows) in SHAPES.items():
        for T in a.tokens:
            for dt in ("bf16", "fp16"):
                dtype = torch.bfloat16 if dt == "bf16" else torch.float16
                G = 128
                w, s, _, w_up, sets, x, bm = _problem(R, torch, E, N, K, G, T, top_k, rows, dtype, a.rotations, N * 7 + T)
                tk = top_k if rows == "token" else 1
                cfg = R.triton_moe_config(N, G, block_m=bm)
                c = torch.empty(T, top_k, N, dtype=dtype, device="cuda")

                def fn(r, shuffle):
                    _, sid, eid, ntp = sets[r]  # noqa: B023 (called within this iteration)
                    R.run_triton_moe_gemm(kern, x, w if shuffle else w_up, s, c, sid, eid, ntp, tk, G, cfg,  # noqa: B023 (called within this iteration)
                                          shuffle=shuffle)

                med = {"shuffled": [], "upstream": []}
                for _ in range(a.repeats):  # A B A B ...
                    for variant, sh in (("shuffled", True), ("upstream", False)):
                        smp = B._time(lambda r, sh=sh: fn(r, sh), a.iters, 40, True, a.rotations)
                        med[variant].append(statistics.median(smp))
                ratios = [x_ / y_ for x_, y_ in zip(med["shuffled"], med["upstream"], strict=True)]
                faster = sum(r < 1 for r in ratios)
                # two-sided sign test over the rounds
                from math import comb

                n = len(ratios)
                k = min(faster, n - faster)
                p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)
                line = {"what": "speed", "gemm": name, "shape": f"{N}x{K}", "tokens": T, "dtype": dt,
                        "group_size": G, "unit": "us", "rounds": n, "iters_per_round": a.iters,
                        "shuffled_medians": med["shuffled"], "upstream_medians": med["upstream"],
                        "ratio_mean": statistics.mean(ratios), "ratio_min": min(ratios),
                        "ratio_max": max(ratios), "sign_test_p": p,
                        "device": torch.cuda.get_device_name(0)}
                rows_out.append(line)
                print(json.dumps(line), flush=True)
                out.write(json.dumps(line) + "\n")
    return rows_out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fused-moe", required=True, help="the patched tree's fused_moe.py")
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 128])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--rotations", type=int, default=8)
    ap.add_argument("--out", default="bench_kernels_gpu.jsonl")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--numerics-tokens", type=int, nargs="+", default=[1, 128])
    ap.add_argument("--cpu-interpreter", action="store_true",
                    help="dry run on the CPU under TRITON_INTERPRET=1 (small shapes, numerics only)")
    a = ap.parse_args(argv)
    global DEV, SHAPES
    if a.cpu_interpreter:
        import os

        os.environ["TRITON_INTERPRET"] = "1"
        DEV, a.skip_speed = "cpu", True
        SHAPES = {"gate_up": (64, 256, "token"), "down": (256, 128, "slot")}
    import torch

    if DEV == "cuda" and not torch.cuda.is_available():
        print("bench_kernels_gpu: no GPU here, skipping", file=sys.stderr)
        return 77
    R, B = _modules()
    if DEV == "cpu":
        _interpreter_bf16_dot()
    kern = R.load_triton_kernels(a.fused_moe)
    t0 = time.monotonic()
    with open(a.out, "w") as out:
        num = numerics(R, kern, torch, a, out)
        sp = [] if a.skip_speed else speed(R, B, kern, torch, a, out)
    name = torch.cuda.get_device_name(0) if DEV == "cuda" else "CPU (Triton interpreter)"
    print(f"\n{name}, {time.monotonic() - t0:.0f} s")
    print("numerics (fp64 reference): case, rel. Frobenius error, max abs / max |ref|")
    for r in num:
        print(f"  {r['gemm']:7s} {r['shape']:9s} M={r['tokens']:3d} {r['dtype']} G={r['group_size']:3d}  "
              f"{r['rel_frobenius']:.2e}  {r['max_abs_over_max_ref']:.2e}  {'ok' if r['ok'] else 'FAIL'}")
    if sp:
        print("speed: shuffled vs upstream layout, median us per round (A B alternating), ratio")
        for r in sp:
            print(f"  {r['gemm']:7s} {r['shape']:9s} M={r['tokens']:3d} {r['dtype']}  "
                  f"shuffled {statistics.median(r['shuffled_medians']):8.2f}  "
                  f"upstream {statistics.median(r['upstream_medians']):8.2f}  ratio {r['ratio_mean']:.3f} "
                  f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}] over {r['rounds']} rounds, "
                  f"sign test p {r['sign_test_p']:.3f}")
    return 0 if all(r["ok"] for r in num) else 1


if __name__ == "__main__":
    sys.exit(main())
