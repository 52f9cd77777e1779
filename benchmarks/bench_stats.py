"""Statistical power and false-positive rate of vpatch's comparison versus the fork's practice.

Run on demand::

    python benchmarks/bench_stats.py [--trials N] [--effect PCT] [--seed S]

Simulated noise (DESIGN.md, "Noise has two levels"): every boot (server start) draws an offset
N(0, 0.3 %) of the metric; every run inside the boot adds N(0, 0.15 %); 5 runs per boot. TPOT
base 15.2 ms, lower is better, B = A · (1 + effect) in the "shift" trials. An extra A/A
scenario adds a slow drift over the session (Gaussian random walk, 0.1 % per boot) on top.

Methods (all at alpha = 0.01 where a test is involved):

* ``fork practice``: one boot per side (A then B), 3 runs each, median; "changed" when the
  medians differ by more than half the effect (0.5 % for a 1 % effect) — the naive rule.
* ``pinpoint pooled``: 3 boots per side interleaved, 5 runs each, min(MWU, KS) on the 15 + 15
  pooled runs — a correct test applied to pseudo-replicates.
* ``peeking, uncorrected``: vpatch's paired boot test after every pair 3…12, stopping at the
  first p ≤ 0.01 — what adaptive sampling does *without* a sequential correction.
* ``vpatch fixed 12+12``: compare_boots on 12 interleaved pairs, one look.
* ``vpatch adaptive``: AdaptiveComparison (3…12 boots per side, A B A B, Pocock / Bonferroni).

Reported: false-positive rate in A/A (any "different" verdict), power = share of shift trials
called in the right direction (at the main and at a smaller shift; the fork's rule is told the
shift it looks for, so its threshold is half of each), share "same"/"unknown", mean boots per comparison, then ratios
vpatch adaptive (Pocock) / fork practice.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vpatch.validation.sampling import AdaptiveComparison
from vpatch.validation.stats import compare, compare_boots

BASE_MS = 15.2
BOOT_SIGMA = 0.003
RUN_SIGMA = 0.0015
RUNS_PER_BOOT = 5
ALPHA = 0.01


class Session:
    """A sequence of boots in time; each boot of a side gets runs with two-level noise."""

    def __init__(self, rng: np.random.Generator, effect: float, drift_walk: float = 0.0) -> None:
        self.rng = rng
        self.effect = effect
        self.drift_walk = drift_walk
        self.level = 0.0

    def boot(self, side: str, runs: int = RUNS_PER_BOOT) -> list[float]:
        if self.drift_walk:
            self.level += self.rng.normal(0.0, self.drift_walk)
        mult = 1.0 + (self.effect if side == "b" else 0.0)
        offset = self.rng.normal(0.0, BOOT_SIGMA) + self.level
        noise = self.rng.normal(0.0, RUN_SIGMA, size=runs)
        return list(BASE_MS * mult * (1.0 + offset) * (1.0 + noise))


@dataclass
class Outcome:
    verdict: str  # better | worse | same | unknown
    boots: int


def fork_practice(s: Session, target: float) -> Outcome:
    a = float(np.median(s.boot("a", 3)))
    b = float(np.median(s.boot("b", 3)))
    change = b / a - 1.0
    thr = abs(target) / 2.0
    if abs(change) > thr:
        return Outcome("better" if change < 0 else "worse", 2)
    return Outcome("same", 2)


def pinpoint_pooled(s: Session, target: float) -> Outcome:
    a: list[float] = []
    b: list[float] = []
    for _ in range(3):
        a += s.boot("a")
        b += s.boot("b")
    c = compare(a, b, alpha=ALPHA, n_resamples=200)
    return Outcome(c.verdict, 6)


def peeking_uncorrected(s: Session, target: float) -> Outcome:
    a: list[list[float]] = []
    b: list[list[float]] = []
    c = None
    for k in range(1, 13):
        a.append(s.boot("a"))
        b.append(s.boot("b"))
        if k >= 3:
            c = compare_boots(a, b, alpha=ALPHA, paired=True)
            if c.verdict != "unknown":
                break
    assert c is not None
    return Outcome(c.verdict, 2 * len(a))


def fixed_12(s: Session, target: float) -> Outcome:
    a: list[list[float]] = []
    b: list[list[float]] = []
    for _ in range(12):
        a.append(s.boot("a"))
        b.append(s.boot("b"))
    return Outcome(compare_boots(a, b, alpha=ALPHA, paired=True).verdict, 24)


def adaptive(correction: str) -> Callable[[Session, float], Outcome]:
    def run(s: Session, target: float) -> Outcome:
        ac = AdaptiveComparison(min_boots=3, max_boots=12, alpha=ALPHA, correction=correction)  # type: ignore[arg-type]
        while not ac.done:
            side = ac.next_side()
            ac.add(side, s.boot(side))
        d = ac.decision()
        assert d is not None
        return Outcome(d.verdict, ac.boots_used)

    return run


METHODS: list[tuple[str, Callable[[Session, float], Outcome]]] = [
    ("fork practice (3-run median, |Δ|>½effect)", fork_practice),
    ("pinpoint pooled runs (3 boots/side)", pinpoint_pooled),
    ("peeking, uncorrected (3…12 pairs)", peeking_uncorrected),
    ("vpatch fixed 12+12 boots, paired t", fixed_12),
    ("vpatch adaptive, Bonferroni", adaptive("bonferroni")),
    ("vpatch adaptive, Pocock (default)", adaptive("pocock")),
]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)


def run_trials(
    method: Callable[[Session, float], Outcome],
    true_shift: float,
    target: float,
    trials: int,
    seed: int,
    drift: float = 0.0,
) -> list[Outcome]:
    """``trials`` comparisons; ``target`` is the effect the method is told to look for."""
    rng = np.random.default_rng(seed)
    return [method(Session(rng, true_shift, drift), target) for _ in range(trials)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1500, help="trials per method and scenario (default 1500)")
    ap.add_argument("--effect", type=float, default=1.0, help="shift of B in %% (default 1.0: B 1 %% slower)")
    ap.add_argument("--small", type=float, default=0.5, help="a second, smaller shift in %% for a second power column (default 0.5)")
    ap.add_argument("--drift", type=float, default=0.1, help="random-walk drift per boot in %% for the drift A/A column")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    eff = args.effect / 100.0
    want = "worse" if eff > 0 else "better"
    t0 = time.time()
    print(
        f"noise: boot σ {BOOT_SIGMA * 100:.2f} %, run σ {RUN_SIGMA * 100:.2f} %, {RUNS_PER_BOOT} runs/boot; "
        f"shift {args.effect:+.2f} %; alpha {ALPHA}; {args.trials} trials per cell"
    )
    hdr = (
        f"{'method':44s} {'FPR A/A':>8s} {'(95% CI)':>15s} {'FPR drift':>9s} {'power':>7s} {'pow ' + format(args.small, 'g') + '%':>8s} "
        f"{'unknown':>8s} {'same A/A':>8s} {'boots A/A':>9s} {'boots shift':>11s}"
    )
    print(hdr)
    print("-" * len(hdr))
    rows: dict[str, dict[str, float]] = {}
    for i, (name, fn) in enumerate(METHODS):
        aa = run_trials(fn, 0.0, eff, args.trials, args.seed + 100 * i)
        dr = run_trials(fn, 0.0, eff, args.trials, args.seed + 100 * i + 50, args.drift / 100)
        sh = run_trials(fn, eff, eff, args.trials, args.seed + 100 * i + 1)
        sm_eff = math.copysign(args.small / 100.0, eff)
        sm = run_trials(fn, sm_eff, sm_eff, args.trials, args.seed + 100 * i + 2)
        n = args.trials
        fp = sum(o.verdict in ("better", "worse") for o in aa)
        fpd = sum(o.verdict in ("better", "worse") for o in dr)
        pw = sum(o.verdict == want for o in sh)
        unk = sum(o.verdict == "unknown" for o in sh)
        same = sum(o.verdict == "same" for o in aa)
        lo, hi = wilson(fp, n)
        r = {
            "fpr": fp / n,
            "fpr_drift": fpd / n,
            "power": pw / n,
            "power_small": sum(o.verdict == want for o in sm) / n,
            "unknown": unk / n,
            "same": same / n,
            "boots_aa": float(np.mean([o.boots for o in aa])),
            "boots_sh": float(np.mean([o.boots for o in sh])),
        }
        rows[name] = r
        print(
            f"{name:44s} {r['fpr']:8.2%} {f'({lo:.2%}–{hi:.2%})':>15s} {r['fpr_drift']:9.2%} {r['power']:7.1%} {r['power_small']:8.1%} "
            f"{r['unknown']:8.1%} {r['same']:8.1%} {r['boots_aa']:9.1f} {r['boots_sh']:11.1f}",
            flush=True,
        )
    base = rows[METHODS[0][0]]
    ours = rows[METHODS[-1][0]]

    def ratio(x: float, y: float) -> str:
        return "inf" if y == 0 else f"{x / y:.2f}×"

    print()
    print("ratios, vpatch adaptive (Pocock) / fork practice:")
    print(f"  false-positive rate A/A   {ratio(ours['fpr'], base['fpr'])}  ({ours['fpr']:.2%} vs {base['fpr']:.2%})")
    print(f"  false-positive rate drift {ratio(ours['fpr_drift'], base['fpr_drift'])}  ({ours['fpr_drift']:.2%} vs {base['fpr_drift']:.2%})")
    print(f"  power at {args.effect:+.2f} %         {ratio(ours['power'], base['power'])}  ({ours['power']:.1%} vs {base['power']:.1%})")
    print(f"  power at {math.copysign(args.small, eff):+.2f} %         {ratio(ours['power_small'], base['power_small'])}  ({ours['power_small']:.1%} vs {base['power_small']:.1%})")
    print(f"  boots per comparison      {ratio(ours['boots_sh'], base['boots_sh'])}  (shift; {ours['boots_sh']:.1f} vs {base['boots_sh']:.1f})")
    fork_small = run_trials(fork_practice, 0.0, sm_eff, args.trials, args.seed + 7)
    fp_small = sum(o.verdict in ("better", "worse") for o in fork_small) / args.trials
    print(
        f"  note: at {abs(args.small):g} % the fork's rule calls |Δ| > {abs(args.small) / 2:g} % a change; "
        f"its A/A false-positive rate at that threshold is {fp_small:.1%}"
    )
    print(f"  wrong-direction calls in shift trials are counted as misses; wall {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
