#!/usr/bin/env python3
"""GPU run of the series' Triton W4A16 MoE kernel: shuffled (skinny [E, N, K/8] int32) vs the
unshuffled upstream layout ([E, N, K/2] uint8), same tiles, Qwen3-Omni-30B-A3B decode shapes.

Runs patches/checks/bench_moe_int4.py --compare in `--repeats` separate processes (the process
is the unit of replication) for each dtype, then prints medians with their spread: the
within-process IQR of the 200 samples and the range of the process medians.
On an NVIDIA card this says nothing about gfx11 speed; it checks the kernel compiles and runs
on real hardware and how the layouts compare on that card.

  python benchmarks/bench_kernels_gpu.py --fused-moe PATCHED/fused_moe.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "patches" / "checks" / "bench_moe_int4.py"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fused-moe", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", default="1")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows: dict[tuple, list[dict]] = {}
    for dtype in ("bf16", "fp16"):
        for tokens in a.tokens.split(","):
            for rep in range(a.repeats):
                argv = [sys.executable, str(BENCH), "--compare", "--dtype", dtype, "--tokens", tokens,
                        "--fused-moe", a.fused_moe]
                r = subprocess.run(argv, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"bench exited {r.returncode}:\n{r.stderr[-3000:]}", file=sys.stderr)
                    if not r.stdout.strip():
                        return r.returncode or 1
                for ln in r.stdout.splitlines():
                    d = json.loads(ln)
                    if d["kernel"].startswith("moe_gemm"):
                        continue  # same as triton_shuffle_* on a machine without the HIP op
                    rows.setdefault((dtype, tokens, d["kernel"], d["shape"]), []).append(d)
                    if a.out:
                        with open(a.out, "a") as f:
                            f.write(ln + "\n")
    dev = next(iter(rows.values()))[0]["device"]
    print(f"\n{dev}: median us (IQR within process; range of {a.repeats} process medians), max rel err")
    print(f"{'dtype':5} {'M':>2} {'kernel':34} {'shape':10} {'median':>8} {'IQR':>13} {'proc range':>15} {'rel err':>8}")
    for (dtype, tokens, kernel, shape), ds in sorted(rows.items()):
        meds = [statistics.median(d["samples"]) for d in ds]
        allq = statistics.quantiles([x for d in ds for x in d["samples"]], n=4)
        err = max(d["rel_err"] for d in ds)
        print(f"{dtype:5} {tokens:>2} {kernel:34} {shape:10} {statistics.median(meds):8.2f} "
              f"{allq[0]:6.2f}-{allq[2]:6.2f} {min(meds):7.2f}-{max(meds):7.2f} {err:8.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
