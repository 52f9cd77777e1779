"""How often does each bisect strategy name the right entry, and at what cost?  (on demand, one run)

A hidden culprit shifts decode TPOT by +1 % at a random position of a series of N entries; every run has
per-run noise (sigma 0.5 %), every batch (boot) an extra between-boot term and a slow random-walk drift; each
entry is compiled (a fresh build) or python-only with probability 1/2.  Strategies:

* naive (1 run)   -- ``git bisect run`` with one run per step, bad if past the halfway point of good/bad
* 3-run median    -- the fork's practice: the same on 3-run medians
* pinpoint-like   -- each attempt its own boot, 10 attempts per position, +10 until Mann-Whitney decides
* vpatch          -- probabilistic bisection (``vpatch.validation.bisect.Bisector``), stop at 95 % (and 99 %)

Printed per N: culprit accuracy (± standard error), undecided share, mean builds (distinct compiled builds,
references included; and the share of bisects within ceil(log2 N) + 2), mean benchmark runs and boots.  Then
the goals at N = 24 and how often each strategy names a culprit when there is none.

    python benchmarks/bench_bisect.py                 # 500 trials per cell, ~1-3 min on 2 shared cores
    python benchmarks/bench_bisect.py --trials 100 --n 24
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # small batched solves: threads only oversubscribe the cores

import argparse  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

from vpatch.validation.bisect import Budget  # noqa: E402
from vpatch.validation.simulate import (  # noqa: E402
    STRATEGIES,
    NoiseModel,
    SimOracle,
    TrialResult,
    summarize,
    vpatch_strategy,
)

NAMES = ["naive (1 run)", "3-run median", "pinpoint-like", "vpatch conf=0.95", "vpatch conf=0.99"]


def _strategy(name: str):
    if name.startswith("vpatch"):
        return vpatch_strategy(confidence=float(name.split("=")[1]), budget=Budget(max_runs=1000))
    return STRATEGIES[name]


def _cell(args: tuple[str, NoiseModel, int, int, int, bool]) -> tuple[str, int, list[TrialResult], float]:
    name, model, start, stop, seed, null = args
    strat = _strategy(name)
    t0 = time.perf_counter()
    out = []
    for i in range(start, stop):
        rng = np.random.default_rng(seed * 1_000_003 + i)  # same worlds for every strategy
        oracle = SimOracle(model, rng, culprit=None) if null else SimOracle(model, rng)
        named = strat(oracle, model.n_entries + 1)
        out.append(TrialResult(oracle.culprit, named, oracle.builds, oracle.runs, oracle.batches))  # type: ignore[arg-type]
    return name, model.n_entries, out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=500, help="trials per (strategy, N) cell (default 500)")
    ap.add_argument("--n", type=int, nargs="+", default=[8, 16, 24, 48], help="series lengths")
    ap.add_argument("--shift", type=float, default=1.0, help="culprit shift, %% (default 1.0)")
    ap.add_argument("--run-sd", type=float, default=0.5, help="per-run noise sd, %% (default 0.5)")
    ap.add_argument("--boot-sd", type=float, default=0.3, help="between-boot sd, %% (default 0.3)")
    ap.add_argument("--walk-sd", type=float, default=0.1, help="random-walk drift per boot, %% (default 0.1)")
    ap.add_argument("--p-compiled", type=float, default=0.5, help="share of entries needing a compile")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--null-trials", type=int, default=None, help="no-shift trials at N=24 (default trials/5)")
    args = ap.parse_args(argv)

    base = NoiseModel(shift_pct=args.shift, run_sd_pct=args.run_sd, boot_sd_pct=args.boot_sd,
                      walk_sd_pct=args.walk_sd, p_compiled=args.p_compiled)
    chunk = max(25, args.trials // 8)
    jobs: list[tuple[str, NoiseModel, int, int, int, bool]] = []
    for n in args.n:
        model = replace(base, n_entries=n)
        for name in NAMES:
            for s in range(0, args.trials, chunk):
                jobs.append((name, model, s, min(args.trials, s + chunk), args.seed, False))
    n_null = args.trials // 5 if args.null_trials is None else args.null_trials
    null_n = 24 if 24 in args.n else args.n[0]
    for name in NAMES:
        if n_null:
            jobs.append((name, replace(base, n_entries=null_n), 0, n_null, args.seed + 1, True))
    # longest first, so the pool ends together
    jobs.sort(key=lambda j: (-(j[1].n_entries * (20 if "vpatch" in j[0] or "pinpoint" in j[0] else 1))))

    t0 = time.perf_counter()
    results: dict[tuple[str, int, bool], list[TrialResult]] = {}
    cpu: dict[str, float] = {}
    with mp.get_context("fork").Pool(args.jobs) as pool:
        for job, (name, n, res, secs) in zip(jobs, pool.imap(_cell, jobs), strict=True):
            results.setdefault((name, n, job[5]), []).extend(res)
            cpu[name] = cpu.get(name, 0.0) + secs
    wall = time.perf_counter() - t0

    print(f"bisect simulation: culprit +{args.shift:g} % at a random position; noise per run {args.run_sd:g} %, "
          f"per boot {args.boot_sd:g} %, drift {args.walk_sd:g} %/boot (random walk); "
          f"{args.p_compiled:.0%} of entries compiled; {args.trials} trials per cell, seed {args.seed}")
    print("builds = distinct compiled builds incl. the two references; runs = benchmark runs; boots = batches\n")
    hdr = (f"{'N':>3} {'strategy':<17} {'accuracy':>15} {'undecided':>9} {'builds':>7} {'max':>4} "
           f"{'<=log2N+2':>9} {'runs':>7} {'boots':>6}")
    print(hdr)
    print("-" * len(hdr))
    summ: dict[tuple[str, int], object] = {}
    for n in args.n:
        lim = math.ceil(math.log2(n)) + 2
        for name in NAMES:
            rs = results[(name, n, False)]
            s = summarize(rs)
            summ[(name, n)] = s
            within = np.mean([r.builds <= lim for r in rs])
            print(f"{n:>3} {name:<17} {s.accuracy:>8.1%} ±{s.accuracy_se:>5.1%} {s.undecided:>9.1%} "
                  f"{s.mean_builds:>7.2f} {s.max_builds:>4d} {within:>9.1%} {s.mean_runs:>7.1f} {s.mean_boots:>6.1f}")
        print()
    if n_null:
        print(f"no culprit at all (N={null_n}, {n_null} trials): share that still names one, runs")
        for name in NAMES:
            rs = results[(name, null_n, True)]
            wrong = np.mean([r.named is not None for r in rs])
            print(f"    {name:<17} names a culprit {wrong:>6.1%}   runs {np.mean([r.runs for r in rs]):>6.1f}")
        print()

    if 24 in args.n:
        v = summ[("vpatch conf=0.95", 24)]
        p = summ[("pinpoint-like", 24)]
        lim = math.ceil(math.log2(24)) + 2
        ok1 = v.accuracy >= 0.95
        ok2 = v.mean_builds <= lim
        ok3 = v.mean_runs < p.mean_runs and v.accuracy >= p.accuracy
        print("goals at N=24 (vpatch conf=0.95):")
        print(f"  accuracy >= 95 %:                 {v.accuracy:.1%} ± {v.accuracy_se:.1%}  "
              f"{'met' if ok1 else 'NOT met'}")
        print(f"  builds <= ceil(log2 N)+2 = {lim}:      mean {v.mean_builds:.2f}, max {v.max_builds}  "
              f"{'met (mean)' if ok2 else 'NOT met'}")
        print(f"  fewer runs than pinpoint-like at >= its accuracy: {v.mean_runs:.1f} vs {p.mean_runs:.1f} runs, "
              f"{v.accuracy:.1%} vs {p.accuracy:.1%}  {'met' if ok3 else 'NOT met'}")
    print(f"\nwall {wall:.0f} s on {args.jobs} processes; cpu s per strategy: "
          + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
