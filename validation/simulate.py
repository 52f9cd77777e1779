"""Seeded simulation of a series bisect: a noise model, an oracle over it, and a driver for any strategy.

Noise model (multiplicative, one oracle call = one batch = one boot):

    sample = level * (1 + delta * [k >= c]) * exp(walk(t) + boot + run)

* ``run ~ N(0, run_sd)`` per run (within one server process),
* ``boot ~ N(0, boot_sd)`` per batch (between boots / builds),
* ``walk`` a random walk advancing ``walk_sd`` per batch (slow drift over a day; shared by batches measured
  close in time, which is what re-measuring references in the same period is for),
* build costs: entry k is compiled with probability ``p_compiled`` (else python-only).  A position's compiled
  artifacts are those of its last compiled entry (or the base), so measuring position k costs a build only
  when that "compile class" has not been built yet.  ``builds`` counts distinct compile classes built,
  references included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from vpatch.validation.bisect import (
    Bisector,
    Budget,
    ProbeFailed,
    SearchOutcome,
    binary_search,
    fixed_median_bisect,
    pinpoint_bisect,
    run_bisect,
)

__all__ = ["NoiseModel", "SimOracle", "ExactOracle", "TrialResult", "Strategy", "STRATEGIES", "vpatch_strategy", "run_trial",
           "run_trials", "Summary", "summarize"]


@dataclass(frozen=True)
class NoiseModel:
    n_entries: int = 24
    level: float = 13.7  # e.g. decode TPOT in ms at the good reference
    shift_pct: float = 1.0  # culprit shift delta, %
    run_sd_pct: float = 0.5
    boot_sd_pct: float = 0.3
    walk_sd_pct: float = 0.1
    p_compiled: float = 0.5


class SimOracle:
    """An :class:`~vpatch.validation.bisect.Oracle` over a :class:`NoiseModel`, with a hidden culprit."""

    def __init__(
        self,
        model: NoiseModel,
        rng: np.random.Generator,
        culprit: int | None | str = "random",
        fail: Sequence[int] = (),
        compiled: Sequence[bool] | None = None,
    ) -> None:
        N = model.n_entries
        self.model = model
        self.rng = rng
        # "random": uniform on 1..N; None: no shift at all (null case)
        self.culprit: int | None = int(rng.integers(1, N + 1)) if culprit == "random" else culprit  # type: ignore[assignment]
        # compiled[k] for entry k (1..N); index 0 = the base, always its own compile class
        if compiled is None:
            compiled = [True] + list(rng.random(N) < model.p_compiled)
        self.compiled = list(compiled)
        cls, cur = [], 0
        for k in range(N + 1):
            if k == 0 or self.compiled[k]:
                cur = k
            cls.append(cur)
        self.compile_class = cls
        self.fail = set(fail)
        self.built: set[int] = set()
        self.walk = 0.0
        self.runs = 0
        self.batches = 0

    def true_value(self, position: int) -> float:
        m = self.model
        shifted = self.culprit is not None and position >= self.culprit
        return m.level * (1 + m.shift_pct / 100 * shifted)

    def build_cost(self, position: int) -> float:
        if position in self.fail:
            return 1.0
        return 0.0 if self.compile_class[position] in self.built else 1.0

    def measure(self, position: int, n_runs: int) -> list[float]:
        if position in self.fail:
            raise ProbeFailed(f"position {position}: patch does not apply")
        self.built.add(self.compile_class[position])
        m = self.model
        self.walk += self.rng.normal(0, m.walk_sd_pct / 100) if self.batches else 0.0
        self.batches += 1
        self.runs += n_runs
        boot = self.rng.normal(0, m.boot_sd_pct / 100)
        run = self.rng.normal(0, m.run_sd_pct / 100, size=n_runs)
        return list(self.true_value(position) * np.exp(self.walk + boot + run))

    @property
    def builds(self) -> int:
        return len(self.built)


class ExactOracle:
    """Noise-free step: ``good`` before the culprit, ``bad`` from it on (tests)."""

    def __init__(self, n_entries: int, culprit: int, good: float = 13.7, bad: float = 14.1) -> None:
        self.n_entries, self.culprit, self.good, self.bad = n_entries, culprit, good, bad
        self.calls: list[int] = []

    def build_cost(self, position: int) -> float:
        return 0.0

    def measure(self, position: int, n_runs: int) -> list[float]:
        self.calls.append(position)
        return [self.bad if position >= self.culprit else self.good] * n_runs


Strategy = Callable[[SimOracle, int], int | None]  # (oracle, n_positions) -> named culprit (None: undecided)


def vpatch_strategy(**kwargs) -> Strategy:
    """vpatch's probabilistic bisection, with a safety budget unless one is given."""
    kwargs.setdefault("budget", Budget(max_runs=1000))

    def run(oracle: SimOracle, n_positions: int) -> int | None:
        res = run_bisect(Bisector(n_positions, **kwargs), oracle)
        return res.culprit

    return run


def _baseline(fn: Callable[[SimOracle, int], SearchOutcome]) -> Strategy:
    return lambda oracle, n: fn(oracle, n).culprit


STRATEGIES: dict[str, Strategy] = {
    "naive (1 run)": _baseline(binary_search),
    "3-run median": _baseline(fixed_median_bisect),
    "pinpoint-like": _baseline(pinpoint_bisect),
    "vpatch": vpatch_strategy(),
}


@dataclass(frozen=True)
class TrialResult:
    culprit: int
    named: int | None
    builds: int
    runs: int
    boots: int

    @property
    def correct(self) -> bool:
        return self.named == self.culprit


def run_trial(strategy: Strategy, model: NoiseModel, seed: int) -> TrialResult:
    rng = np.random.default_rng(seed)
    oracle = SimOracle(model, rng)
    named = strategy(oracle, model.n_entries + 1)
    return TrialResult(oracle.culprit, named, oracle.builds, oracle.runs, oracle.batches)


def run_trials(strategy: Strategy, model: NoiseModel, trials: int, seed: int = 0) -> list[TrialResult]:
    # Same seeds for every strategy: same culprits, same compiled/python-only layout.
    return [run_trial(strategy, model, seed * 1_000_003 + i) for i in range(trials)]


@dataclass(frozen=True)
class Summary:
    trials: int
    accuracy: float
    accuracy_se: float
    undecided: float
    mean_builds: float
    max_builds: int
    mean_runs: float
    mean_boots: float


def summarize(results: Sequence[TrialResult]) -> Summary:
    n = len(results)
    acc = sum(r.correct for r in results) / n
    return Summary(
        trials=n,
        accuracy=acc,
        accuracy_se=math.sqrt(acc * (1 - acc) / n),
        undecided=sum(r.named is None for r in results) / n,
        mean_builds=float(np.mean([r.builds for r in results])),
        max_builds=max(r.builds for r in results),
        mean_runs=float(np.mean([r.runs for r in results])),
        mean_boots=float(np.mean([r.boots for r in results])),
    )
