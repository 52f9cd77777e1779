"""Stress test of vpatch's verdicts under noise the method does not assume (on demand, one run).

The in-model figures (bench_stats.py, bench_bisect.py) draw their noise from the very model the tests
assume. Here every comparison runs through the production code (``AdaptiveComparison``; for chains the
``Validator`` with a real SQLite results store, so reuse is what `vpatch validate` does; for the bisect
the ``Bisector``) against these noise models, all around TPOT 15.2 ms, 5 runs per boot:

* ``in-model``       boot offset N(0, 0.3 %), run noise N(0, 0.15 %)
* ``t3 runs``        run noise Student-t with 3 d.o.f. (same scale)
* ``outlier boots``  5 % of boots shifted +5 % (a neighbour job, a thermal event, a cold cache)
* ``bimodal boots``  every boot +0 or +0.6 % with equal chance, on top of the boot offset
* ``drift``          a linear drift of 1 % over 24 boots (the whole of a comparison's budget)
* ``AR(1) runs``     run noise AR(1) with φ 0.9 carried across boots (same stationary spread)
* ``all at once``    all of the above together
* ``GPU (measured)`` the H200 figures of shared/README.md: 0.02 % per run, 0.1 % per process,
                     5 % of processes +0.27 %
* ``engine (replayed)`` when ``--engine-noise FILE`` (default benchmarks/data/engine_noise_cpu.json,
                     written by bench_engine_noise.py) exists: boots of the real vLLM CPU engine
                     replayed — a boot's offset is drawn from the recorded boots' medians, its runs
                     from that boot's own runs (both relative, so any level works)

Reported with a 95 % Wilson interval: A/A false-positive rate (any better/worse verdict when nothing
changed), power (a +1 % change called "worse"), mean boots; side by side with the fork's practice
(one boot per side, 3-run medians, "changed" when they differ by more than half the effect).

    python benchmarks/bench_stress.py                    # defaults: 600 / 80 / 200 trials, 1,172 s on 2 cores at load 17-25
    python benchmarks/bench_stress.py --part single --trials 500
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from vpatch.manager.prefixes import Prefix  # noqa: E402
from vpatch.validation.bisect import Bisector, Budget, run_bisect  # noqa: E402
from vpatch.validation.sampling import AdaptiveComparison  # noqa: E402
from vpatch.validation.simulate import fixed_median_bisect  # noqa: E402
from vpatch.validation.store import Store  # noqa: E402
from vpatch.validation.validate import Validator  # noqa: E402

LEVEL = 15.2
RUNS = 5
MODELS = ["in-model", "t3 runs", "outlier boots", "bimodal boots", "drift", "AR(1) runs", "all at once",
          "GPU (measured)"]


@dataclass(frozen=True)
class Spec:
    run_sd: float = 0.0015
    boot_sd: float = 0.003
    t3: bool = False
    p_out: float = 0.0
    out: float = 0.05
    bimodal: float = 0.0
    slope: float = 0.0  # per boot
    ar: bool = False


def spec(model: str) -> Spec:
    allm = model == "all at once"
    if model == "GPU (measured)":
        return Spec(run_sd=0.0002, boot_sd=0.001, p_out=0.05, out=0.0027)
    return Spec(t3=allm or model == "t3 runs", p_out=0.05 if allm or model == "outlier boots" else 0.0,
                bimodal=0.006 if allm or model == "bimodal boots" else 0.0,
                slope=0.01 / 24 if allm or model == "drift" else 0.0, ar=allm or model == "AR(1) runs")


REPLAY: list[np.ndarray] = []  # per recorded boot: log(run / grand median)


def load_engine_noise(path: Path, metric: str = "median_tpot_ms") -> int:
    """Read bench_engine_noise.py's JSON (boots of the first engine); returns how many boots were usable."""
    import json

    d = json.loads(Path(path).read_text())
    boots = [b for b in d.get("boots", []) if b.get("healthy", True) and b.get("runs")]
    first = boots[0].get("engine") if boots else None
    runs = [np.array([r[metric] for r in b["runs"] if r.get(metric)], dtype=float)
            for b in boots if b.get("engine") == first]
    runs = [r for r in runs if r.size]
    if len(runs) < 3:
        return 0
    grand = float(np.median(np.concatenate(runs)))
    REPLAY[:] = [np.log(r / grand) for r in runs]
    return len(REPLAY)


class World:
    """One experiment in time: boots come one after another, whatever they measure."""

    def __init__(self, model: str, rng: np.random.Generator) -> None:
        self.model = model
        self.s = spec(model) if model != "engine (replayed)" else Spec()
        self.rng = rng
        self.t = 0
        self.ar = rng.normal(0, self.s.run_sd)

    def boot(self, mult: float, runs: int = RUNS) -> list[float]:
        s, rng = self.s, self.rng
        if self.model == "engine (replayed)":
            rec = REPLAY[int(rng.integers(len(REPLAY)))]
            off = float(np.median(rec))
            within = rec - off
            return list(LEVEL * mult * np.exp(off + rng.choice(within, size=runs)))
        off = rng.normal(0, s.boot_sd) + s.slope * self.t
        if s.p_out and rng.random() < s.p_out:
            off += s.out
        if s.bimodal and rng.random() < 0.5:
            off += s.bimodal
        self.t += 1
        if s.t3:
            r = s.run_sd / math.sqrt(3) * rng.standard_t(3, size=runs)
        else:
            r = rng.normal(0, s.run_sd, size=runs) if not s.ar else np.zeros(runs)
        if s.ar:
            phi = 0.9
            for i in range(runs):
                self.ar = phi * self.ar + rng.normal(0, s.run_sd * math.sqrt(1 - phi * phi))
                r[i] += self.ar
        return list(LEVEL * mult * np.exp(off + r))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)


def rate(k: int, n: int, decimals: int = 1) -> str:
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.{decimals}f} % ({100 * lo:.{decimals}f}–{100 * hi:.{decimals}f})"


# ------------------------------------------------------------------------------------------ single


def vpatch_single(w: World, eff: float) -> tuple[str, int]:
    ac = AdaptiveComparison(metric="TPOT", unit="ms")
    while not ac.done:
        side = ac.next_side()
        ac.add(side, w.boot(1 + eff if side == "b" else 1.0))
    d = ac.decision()
    assert d is not None
    return d.verdict, ac.boots_used


def fork_single(w: World, eff: float, target: float = 0.01) -> tuple[str, int]:
    a = float(np.median(w.boot(1.0, 3)))
    b = float(np.median(w.boot(1 + eff, 3)))
    ch = b / a - 1
    return ("worse" if ch > 0 else "better") if abs(ch) > target / 2 else "same", 2


def _single(args: tuple[str, str, float, int, int]) -> tuple[str, str, float, list[tuple[str, int]]]:
    method, model, eff, n, seed = args
    fn = vpatch_single if method == "vpatch" else fork_single
    rng = np.random.default_rng(seed)
    return method, model, eff, [fn(World(model, rng), eff) for _ in range(n)]


# ------------------------------------------------------------------------------------------- chain


class SimMeasurer:
    """A measurer over a World: prefix k (tree "t<k>") sits at level (1 + step)^k."""

    metric, unit, lower_is_better, kind = "tpot", "ms", True, "samples"

    def __init__(self, w: World, step: float) -> None:
        self.w, self.step = w, step

    def config_content(self) -> dict:
        return {"kind": "sim"}

    def boot(self, tree: Path, env=None, runs=None) -> list[float]:
        k = int(Path(tree).name[1:])
        return self.w.boot((1 + self.step) ** k)


def vpatch_chain(w: World, step: float, against_base: bool, n_entries: int = 4) -> list[str]:
    store = Store.open(":memory:")
    pref = [Prefix(k, f"e{k}" if k else None, f"c{k}", f"t{k}") for k in range(n_entries + 1)]
    v = Validator(store, "v0", None, lambda p: Path(p.tree))
    m = SimMeasurer(w, step)
    rows = v.run(m, pref[1:], pref[0] if against_base else None, pref)
    store.close()
    return [r.verdict for r in rows]


def fork_chain(w: World, step: float, against_base: bool, n_entries: int = 4) -> list[str]:
    """The fork's practice with its stored numbers: each prefix measured once (3-run median), reused."""
    med = {k: float(np.median(w.boot((1 + step) ** k, 3))) for k in range(n_entries + 1)}
    out = []
    for k in range(1, n_entries + 1):
        ref = med[0] if against_base else med[k - 1]
        ch = med[k] / ref - 1
        out.append(("worse" if ch > 0 else "better") if abs(ch) > 0.005 else "same")
    return out


def _chain(args: tuple[str, str, float, bool, int, int]) -> tuple[str, str, float, bool, list[list[str]]]:
    method, model, step, base, n, seed = args
    fn = vpatch_chain if method == "vpatch" else fork_chain
    rng = np.random.default_rng(seed)
    return method, model, step, base, [fn(World(model, rng), step, base) for _ in range(n)]


# ------------------------------------------------------------------------------------------ bisect


class BisectOracle:
    def __init__(self, w: World, n: int, culprit: int, shift: float = 0.01) -> None:
        self.w, self.n, self.culprit, self.shift = w, n, culprit, shift
        self.boots = 0

    def build_cost(self, position: int) -> float:
        return 0.0

    def measure(self, position: int, n_runs: int) -> list[float]:
        self.boots += 1
        return self.w.boot(1 + self.shift * (position >= self.culprit), n_runs)


def _bisect(args: tuple[str, str, int, int, int]) -> tuple[str, str, list[tuple[int, int | None, int]]]:
    method, model, n_trials, seed, N = args
    out = []
    for i in range(n_trials):
        rng = np.random.default_rng(seed * 1_000_003 + i)
        culprit = int(rng.integers(1, N + 1))
        o = BisectOracle(World(model, rng), N, culprit)
        if method == "vpatch":
            named = run_bisect(Bisector(N + 1, budget=Budget(max_runs=1000)), o).culprit
        else:
            named = fixed_median_bisect(o, N + 1).culprit
        out.append((culprit, named, o.boots))
    return method, model, out


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["single", "chain", "bisect", "all"], default="all")
    ap.add_argument("--trials", type=int, default=600, help="single comparisons per cell (default 600)")
    ap.add_argument("--chain-trials", type=int, default=80, help="chains of 4 comparisons per cell (default 80)")
    ap.add_argument("--bisect-trials", type=int, default=200, help="bisects per cell at N=24 (default 200)")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--engine-noise", type=Path, default=Path(__file__).parent / "data" / "engine_noise_cpu.json")
    args = ap.parse_args(argv)
    if args.engine_noise.exists() and load_engine_noise(args.engine_noise):
        args.models = list(args.models) + ["engine (replayed)"]
        print(f"real engine noise: {len(REPLAY)} boots replayed from {args.engine_noise}")
    else:
        print(f"real engine noise: {args.engine_noise} not found; the GPU row uses shared/README.md's H200 figures")
    t0 = time.time()
    ok = True
    pool = mp.get_context("fork").Pool(args.jobs)
    print(f"noise models: {', '.join(args.models)}; alpha 0.01; 95 % Wilson intervals in brackets")
    if args.part in ("single", "all"):
        jobs = []
        for mi, model in enumerate(args.models):
            for method in ("fork", "vpatch"):
                for eff in (0.0, 0.01):
                    for c in range(4):
                        jobs.append((method, model, eff, args.trials // 4, args.seed * 7919 + mi * 100 + c * 10
                                     + int(eff * 100) + (method == "vpatch")))
        res: dict = {}
        for method, model, eff, out in pool.imap_unordered(_single, jobs):
            res.setdefault((method, model, eff), []).extend(out)
        print(f"\nsingle comparison, A/A and +1 % ({args.trials} trials per cell)")
        hdr = f"{'noise':15s} | {'fork: false pos.':>22s} {'power':>7s} | {'vpatch: false pos.':>22s} {'power +1 %':>22s} {'boots':>5s} | goals"
        print(hdr)
        print("-" * len(hdr))
        for model in args.models:
            f0, f1 = res[("fork", model, 0.0)], res[("fork", model, 0.01)]
            v0, v1 = res[("vpatch", model, 0.0)], res[("vpatch", model, 0.01)]
            ffp = sum(v in ("better", "worse") for v, _ in f0)
            fpw = sum(v == "worse" for v, _ in f1)
            vfp = sum(v in ("better", "worse") for v, _ in v0)
            vpw = sum(v == "worse" for v, _ in v1)
            n = len(v0)
            need = 0.75 if model == "all at once" else 0.90
            met = vfp / n <= 0.01 and vpw / n >= need
            ok &= met
            print(f"{model:15s} | {rate(ffp, n):>22s} {100 * fpw / n:6.1f}% | {rate(vfp, n, 2):>22s} {rate(vpw, n):>22s} "
                  f"{np.mean([b for _, b in v1]):5.1f} | {'met' if met else 'NOT met'}", flush=True)
    if args.part in ("chain", "all"):
        jobs = []
        for mi, model in enumerate(args.models):
            for method in ("fork", "vpatch"):
                for base in (False, True):
                    for step in ((0.0,) if base else (0.0, 0.01)):  # against base, +k % is easier than +1 %
                        for c in range(4):
                            jobs.append((method, model, step, base, args.chain_trials // 4,
                                         args.seed * 104729 + mi * 1000 + c * 10 + int(step * 100) * 3 + base))
        cres: dict = {}
        for method, model, step, base, out in pool.imap_unordered(_chain, jobs):
            cres.setdefault((method, model, step, base), []).extend(out)
        print(f"\nper-entry chain of 4 comparisons through Validator + results store ({args.chain_trials} chains per cell)")
        print("A/A: every prefix equal; power: every entry +1 % over the one before")
        for base in (False, True):
            what = "--against base (k vs 0)" if base else "k vs k-1"
            print(f"\n{what}: false positives (%) of comparison 1, 2, 3, 4" + ("" if base else " | power (%) of 1…4"))
            for model in args.models:
                line = f"{model:15s}"
                for method in ("fork", "vpatch"):
                    aa = cres[(method, model, 0.0, base)]
                    sh = cres.get((method, model, 0.01, base), [])
                    n = len(aa)
                    fps = [sum(r[j] in ("better", "worse") for r in aa) for j in range(4)]
                    pws = [sum(r[j] == "worse" for r in sh) for j in range(4)] if sh else [n] * 4
                    need = 0.75 if model == "all at once" else 0.90
                    if method == "vpatch":
                        met = max(fps) / n <= 0.01 and min(pws) / n >= need
                        ok &= met
                    worst = int(np.argmax(fps))
                    line += (f" | {method}: FP " + " ".join(f"{100 * k / n:4.1f}" for k in fps)
                             + f" (worst {rate(fps[worst], n)})"
                             + (" power " + " ".join(f"{100 * k / n:3.0f}" for k in pws) if sh else ""))
                    if method == "vpatch":
                        line += f"  {'met' if met else 'NOT met'}"
                print(line, flush=True)
    if args.part in ("bisect", "all"):
        N = 24
        jobs = []
        per = max(1, args.bisect_trials // 4)
        for mi, model in enumerate(args.models):
            for method in ("3-run median", "vpatch"):
                for c in range(4):
                    jobs.append((method, model, per, args.seed * 31 + mi * 10 + c, N))
        bres: dict = {}
        for method, model, out in pool.imap_unordered(_bisect, jobs):
            bres.setdefault((method, model), []).extend(out)
        print(f"\nbisect, N = {N}, culprit +1 % at a random position ({per * 4} bisects per cell)")
        hdr = f"{'noise':15s} | {'3-run median: right':>22s} | {'vpatch: right':>22s} {'wrong':>22s} {'boots':>6s}"
        print(hdr)
        print("-" * len(hdr))
        for model in args.models:
            f = bres[("3-run median", model)]
            v = bres[("vpatch", model)]
            n = len(v)
            fr = sum(c == nm for c, nm, _ in f)
            vr = sum(c == nm for c, nm, _ in v)
            vw = sum(nm is not None and nm != c for c, nm, _ in v)
            goal = ""
            if model == "outlier boots":
                met = vr / n >= 0.95 and vw / n <= 0.01
                ok &= met
                goal = "  goal ≥ 95 % right, ≤ 1 % wrong: " + ("met" if met else "NOT met")
            print(f"{model:15s} | {rate(fr, n):>22s} | {rate(vr, n):>22s} {rate(vw, n):>22s} "
                  f"{np.mean([b for _, _, b in v]):6.1f}{goal}", flush=True)
    pool.close()
    la = os.getloadavg()
    print(f"\nwall {time.time() - t0:.0f} s on {args.jobs} processes (load average {la[0]:.1f}); "
          f"goals {'all met' if ok else 'NOT all met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
