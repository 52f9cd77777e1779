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
from collections.abc import Callable, Sequence

import numpy as np

from vpatch.validation.bisect import Bisector, Budget, Oracle, ProbeFailed, run_bisect

__all__ = ["SearchOutcome", "binary_search", "fixed_median_bisect", "pinpoint_bisect", "NoiseModel", "SimOracle", "TraceOracle", "ExactOracle", "TrialResult", "Strategy", "STRATEGIES", "vpatch_strategy", "run_trial",
           "run_trials", "Summary", "summarize"]


# ------------------------------------------------------------------------- baselines (git bisect, fork, Pinpoint)


@dataclass
class SearchOutcome:
    culprit: int | None
    probes: list[tuple[int, int]] = field(default_factory=list)  # (position, n_runs) per batch

    @property
    def runs(self) -> int:
        return sum(n for _, n in self.probes)


def _middle(lo: int, hi: int, skipped: set[int]) -> int | None:
    """Like ``git bisect skip``: the unskipped position strictly between lo and hi nearest the middle
    (None when none is left: the search stops with culprit = hi)."""
    order = sorted((m for m in range(lo + 1, hi) if m not in skipped), key=lambda m: abs(2 * m - lo - hi))
    return order[0] if order else None


def _threshold_bisect(oracle: Oracle, n_positions: int, runs: int) -> SearchOutcome:
    N = n_positions - 1
    out = SearchOutcome(None)

    def med(k: int) -> float:
        out.probes.append((k, runs))
        return float(np.median(oracle.measure(k, runs)))

    good, bad = med(0), med(N)
    cut = (good + bad) / 2
    slower = bad > good
    lo, hi = 0, N
    skipped: set[int] = set()
    while hi - lo > 1:
        mid = _middle(lo, hi, skipped)
        if mid is None:
            break
        try:
            v = med(mid)
        except ProbeFailed:
            out.probes.pop()
            skipped.add(mid)
            continue
        is_bad = (v > cut) == slower
        if is_bad:
            hi = mid
        else:
            lo = mid
    out.culprit = hi
    return out


def binary_search(oracle: Oracle, n_positions: int) -> SearchOutcome:
    """Naive ``git bisect run``: one run per step, bad if past the halfway point between the references."""
    return _threshold_bisect(oracle, n_positions, 1)


def fixed_median_bisect(oracle: Oracle, n_positions: int, runs: int = 3) -> SearchOutcome:
    """The fork's practice: the same binary search on 3-run medians."""
    return _threshold_bisect(oracle, n_positions, runs)


def _mann_whitney_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value, normal approximation with tie and continuity corrections
    (what scipy's ``mannwhitneyu`` does for samples larger than 8; cheap enough for simulations)."""
    from scipy.stats import rankdata
    from scipy.special import ndtr

    n1, n2 = len(x), len(y)
    allv = np.concatenate([np.asarray(x, float), np.asarray(y, float)])
    r = rankdata(allv)
    u = r[:n1].sum() - n1 * (n1 + 1) / 2
    mu = n1 * n2 / 2
    _, t = np.unique(allv, return_counts=True)
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - (t**3 - t).sum() / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (abs(u - mu) - 0.5) / math.sqrt(var)
    return float(min(1.0, 2 * ndtr(-max(z, 0.0))))


def pinpoint_bisect(
    oracle: Oracle,
    n_positions: int,
    *,
    attempts: int = 10,
    max_attempts: int = 60,
    alpha: float = 0.01,
    runs_per_boot: int = 1,
) -> SearchOutcome:
    """Pinpoint-like: every attempt is its own boot; compare a midpoint with 10 attempts against both
    references by a Mann-Whitney test, add 10 attempts (to the midpoint and, interleaved, to the references
    when they have fewer) until one side differs at ``alpha`` or ``max_attempts`` is reached (then the closer
    median decides)."""
    N = n_positions - 1
    out = SearchOutcome(None)
    samples: dict[int, list[float]] = {}

    def add(k: int, n_attempts: int) -> None:
        for _ in range(n_attempts):
            out.probes.append((k, runs_per_boot))
            samples.setdefault(k, []).append(float(np.median(oracle.measure(k, runs_per_boot))))

    def grow(ks: Sequence[int], n_attempts: int) -> None:
        # interleave the boots of the positions being compared (A B A B, not A A B B)
        for _ in range(n_attempts):
            for k in ks:
                add(k, 1)

    grow([0, N], attempts)
    lo, hi = 0, N
    skipped: set[int] = set()
    while hi - lo > 1:
        mid = _middle(lo, hi, skipped)
        if mid is None:
            break
        try:
            grow([mid], attempts)
        except ProbeFailed:
            skipped.add(mid)
            continue
        while True:
            p_good = _mann_whitney_p(samples[mid], samples[0])
            p_bad = _mann_whitney_p(samples[mid], samples[N])
            if p_good < alpha and p_good <= p_bad:
                hi = mid
                break
            if p_bad < alpha:
                lo = mid
                break
            if len(samples[mid]) >= max_attempts:
                m = float(np.median(samples[mid]))
                g, b = float(np.median(samples[0])), float(np.median(samples[N]))
                if abs(m - b) < abs(m - g):
                    hi = mid
                else:
                    lo = mid
                break
            refs = [k for k in (0, N) if len(samples[k]) <= len(samples[mid])]
            grow([mid] + refs, attempts)
    out.culprit = hi
    return out


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
        noise = self._log_noise(n_runs)
        self.batches += 1
        self.runs += n_runs
        return list(self.true_value(position) * np.exp(noise))

    def _log_noise(self, n_runs: int) -> np.ndarray:
        """One batch's multiplicative noise, as logs: drift walk + boot offset + per-run terms."""
        m = self.model
        self.walk += self.rng.normal(0, m.walk_sd_pct / 100) if self.batches else 0.0
        boot = self.rng.normal(0, m.boot_sd_pct / 100)
        run = self.rng.normal(0, m.run_sd_pct / 100, size=n_runs)
        return self.walk + boot + run

    @property
    def builds(self) -> int:
        return len(self.built)


class TraceOracle(SimOracle):
    """Noise replayed from a recorded trace instead of drawn from the model: noise the method does not assume.

    ``trace`` holds one measured value per process, in the order they ran (e.g. the test workload run 600
    times on a shared VM: bimodal, a process lands fast or ~35 % slow, and slow ones cluster in time).  Each
    run consumes the next value from a random start, as its log-residual from the trace's median, times the
    hidden step; the model's run/boot/walk terms are not used.  Builds and failures as in :class:`SimOracle`.
    """

    def __init__(self, model: NoiseModel, rng: np.random.Generator, trace: Sequence[float],
                 culprit: int | None | str = "random") -> None:
        super().__init__(model, rng, culprit)
        z = np.log(np.asarray(trace, dtype=float))
        self._resid = z - float(np.median(z))
        self._at = int(rng.integers(len(self._resid)))

    def _log_noise(self, n_runs: int) -> np.ndarray:
        idx = (self._at + np.arange(n_runs)) % len(self._resid)
        self._at += n_runs
        return self._resid[idx]


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
    culprit: int | None
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
