"""Pure search for ``vpatch bisect``: which position of a series (or which upstream commit) shifted a metric.

Nothing here touches git, builds or runs anything.  The effectful command owns an :class:`Oracle` (build a
position, boot it, run the benchmark N times in that boot) and drives a :class:`Bisector`::

    bis = Bisector(n_positions=N + 1, confidence=0.95)      # or Bisector.from_json(saved)
    while (probe := bis.next_probe(build_cost=oracle.build_cost)) is not None:
        try:
            samples = oracle.measure(probe.position, probe.n_runs)   # build (if needed) + one boot
        except ProbeFailed as exc:
            bis.skip(probe.position, str(exc))                        # like ``git bisect skip``
        else:
            bis.observe(probe.position, samples)
        save(bis.to_json())                                           # killed here -> resume, same answer
    print(bis.result())

:func:`run_bisect` is exactly that loop.

Positions are ``0..N``: position ``k`` is base + the first ``k`` entries (prefix k) or the k-th upstream commit.
Position 0 is the good reference, position N the bad one.  The culprit ``c`` in ``1..N`` is the first position
whose metric is shifted: the metric is ``mu`` for ``k < c`` and ``mu * (1 + delta)`` for ``k >= c``.  Both
questions of the design fit the one model:

* upstream bisect: the oracle returns the metric (e.g. decode TPOT) of the whole stack at commit ``k``;
* differential series bisect after a rebase: the oracle returns the ratio of prefix ``k`` on the new base to
  the stored median of prefix ``k`` on the old base (:class:`DifferentialOracle`); the first ``k`` where the
  ratio jumps is the entry that broke.  A base-to-base shift common to every prefix is absorbed by ``mu``.

The model (all in units of 100 * log(metric), i.e. ~percent):

* one oracle call = one *batch* (one boot / server process / job) of ``n`` runs; the batch's statistic is the
  median of its runs;
* batch median = mu + delta*[k >= c] + w(t) + b + e, with e ~ N(0, f(n) sigma^2 / n) (run noise, sigma
  pooled from within-batch spread), b ~ N(0, tau^2) (boot-to-boot noise) and w a random walk over batch index t
  with step sd rho (day-to-day drift, shared by batches measured close in time: why references are re-measured
  between probes);
* mu has a flat prior, delta ~ N(0, s^2) (s = ``effect_prior_pct``), tau and rho are averaged over a grid
  (Bayesian model averaging; the rho grid has no zero -- assuming no drift made the posterior overconfident
  in simulation), c is uniform on 1..N; a "no shift at all" hypothesis (index 0 of the posterior) competes
  with prior ``p_no_shift``, and a shift whose 95 % interval lies inside +-``threshold_pct`` also ends the
  search as "no_shift".

Everything is linear-Gaussian given (c, tau, rho), so the marginal likelihood of every c is exact and cheap.
Probes go where the posterior splits best (binary entropy of P(c <= k)), minus a penalty for a probe that needs
a new compiled build; references are re-measured every ``ref_every`` probes.  The search stops when one position
holds ``confidence`` of the posterior and both sides of that boundary were seen in ``confirm_batches`` boots
that show the step on their own (however large it looks: an outlier boot looks like a large step), when "no shift" does, when the skipped positions make further narrowing impossible, or when the budget is spent; undecided
answers are reported as a range, never as a guess.

The baselines the simulation compares against (naive ``git bisect run``, 3-run medians, Pinpoint-like) live in
:mod:`vpatch.validation.simulate`, not here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as _st

__all__ = [
    "Oracle",
    "ProbeFailed",
    "DifferentialOracle",
    "Budget",
    "Probe",
    "Step",
    "BisectResult",
    "Bisector",
    "run_bisect",
]

STATE_VERSION = 1

Purpose = Literal["reference-good", "reference-bad", "probe"]
Status = Literal["running", "found", "ambiguous", "no_shift"]


# --------------------------------------------------------------------------------------------- oracle side


class ProbeFailed(Exception):
    """Raised by an oracle when a position cannot be applied, built or run (the search skips it)."""


@runtime_checkable
class Oracle(Protocol):
    """What the search needs from the world.

    ``measure`` builds ``position`` if needed, boots it once and returns ``n_runs`` samples of the metric from
    that one boot (positive floats; a per-boot batch is the replication unit).  ``build_cost`` says what
    measuring ``position`` would cost in builds *now*: 0 when it is already built or shares its compiled
    artifacts with a built position (python-only entries), 1 for a fresh compile.
    """

    def measure(self, position: int, n_runs: int) -> list[float]: ...

    def build_cost(self, position: int) -> float: ...


class DifferentialOracle:
    """Differential series bisect after a rebase: ratio of prefix k on the new base to prefix k on the old one.

    ``measure_new(k, n)`` measures prefix k on the new base (one boot, n runs).  The denominator is either
    ``old_medians[k]``, the stored median of the same prefix on the old base (from the results store), or,
    when ``measure_old`` is given, a batch of the old-base prefix measured right after, in the same period
    (no stale per-position error, twice the boots).  A stored median's own error is a fixed offset at that
    position which the step model does not know about, so stored medians should come from several boots.
    The returned samples are ratios, so the step model applies even though the entries change the metric.
    """

    def __init__(
        self,
        measure_new: Callable[[int, int], list[float]],
        old_medians: Sequence[float] | None = None,
        build_cost: Callable[[int], float] | None = None,
        measure_old: Callable[[int, int], list[float]] | None = None,
    ) -> None:
        if (old_medians is None) == (measure_old is None):
            raise ValueError("give exactly one of old_medians and measure_old")
        if old_medians is not None and any(not (m > 0 and math.isfinite(m)) for m in old_medians):
            raise ValueError("old_medians must be positive and finite")
        self._measure_new = measure_new
        self._measure_old = measure_old
        self._old = None if old_medians is None else list(old_medians)
        self._build_cost = build_cost

    def measure(self, position: int, n_runs: int) -> list[float]:
        new = self._measure_new(position, n_runs)
        if self._measure_old is not None:
            denom = float(np.median(self._measure_old(position, n_runs)))
        else:
            assert self._old is not None
            denom = self._old[position]
        return [x / denom for x in new]

    def build_cost(self, position: int) -> float:
        return 0.0 if self._build_cost is None else float(self._build_cost(position))


# --------------------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Budget:
    """Limits; ``None`` = unlimited.  ``max_builds`` counts probes that needed a fresh compile (cost > 0)."""

    max_runs: int | None = None
    max_batches: int | None = None
    max_builds: int | None = None


@dataclass(frozen=True)
class Probe:
    position: int
    n_runs: int
    purpose: Purpose
    reason: str


@dataclass(frozen=True)
class Step:
    """One measured batch, with the evidence it left: its median and, at the end, P(position is bad)."""

    index: int
    position: int
    purpose: Purpose
    n_runs: int
    median: float
    p_bad: float


@dataclass(frozen=True)
class BisectResult:
    status: Status
    culprit: int | None  # named only when status == "found"
    probability: float  # posterior of the most likely culprit
    most_likely: int | None  # MAP culprit, also when undecided
    p_no_shift: float
    suspects: list[tuple[int, float]]  # next most likely positions, with probabilities
    ambiguous_range: tuple[int, int] | None  # smallest k1..k2 holding `confidence`, when undecided
    shift_pct: float | None  # estimated shift at the most likely culprit, % of the good level
    shift_ci_pct: tuple[float, float] | None
    below_threshold: bool  # |shift| < threshold_pct: real but maybe not the regression you are hunting
    skipped: dict[int, str]
    steps: list[Step]
    runs: int
    batches: int
    builds: int  # probes that needed a fresh compile (as reported by build_cost at probe time)
    reason: str
    outliers: list[int] = field(default_factory=list)  # step indices set aside as outlier boots
    threshold_pct: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = {str(k): v for k, v in self.skipped.items()}
        return d

    def describe(self) -> str:
        if self.status == "found":
            below = f", below the {self.threshold_pct:g}% threshold" if self.below_threshold else ""
            lo, hi = self.shift_ci_pct or (math.nan, math.nan)
            return (f"culprit: position {self.culprit} (p={self.probability:.3f}), "
                    f"shift {self.shift_pct:+.2f}% [{lo:+.2f}, {hi:+.2f}]{below}")
        if self.status == "no_shift":
            return f"no shift between good and bad (p={self.p_no_shift:.3f}): {self.reason}"
        if self.status == "ambiguous":
            r = self.ambiguous_range or (0, self.most_likely)
            return (f"ambiguous between {r[0]}..{r[1]} (most likely {self.most_likely}, "
                    f"p={self.probability:.3f}): {self.reason}")
        return f"running: most likely {self.most_likely} (p={self.probability:.3f})"


@dataclass
class _Obs:
    position: int
    samples: list[float]
    build_cost: float = 0.0
    # derived, in 100*log units: median and within-batch sum of squares
    zmed: float = field(init=False, repr=False)
    ss: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        x = 100.0 * np.log(np.asarray(self.samples, dtype=float))
        self.zmed = float(np.median(x))
        self.ss = float(((x - x.mean()) ** 2).sum())


# --------------------------------------------------------------------------------------------- the model

# Hyper-parameter grids, in units of 100*log (≈ %): boot-to-boot sd and random-walk step sd per batch.
_TAU_GRID = (0.04, 0.12, 0.25, 0.45, 0.8, 1.5)
# Wider boot noise, used only when the data are that noisy (a shared CPU machine spreads 2-25 %, and a
# --run boot is one process with one run, so there is no within-boot spread to carry it).
_TAU_WIDE = (3.0, 6.0, 12.0, 25.0)
_RHO_GRID = (0.03, 0.08, 0.2)  # no zero: some drift between boots is always there
#: Outlier screen: an observation whose residual from the most likely step is beyond this many robust
#: standard deviations (1.4826 MAD of all residuals) is set aside, once there are enough observations.
_OUTLIER_K = 5.0
_OUTLIER_MIN_OBS = 8
#: A culprit is named only when the boots at its own boundary show the step by this many standard errors.
_CONFIRM_Z = 3.0
#: ... and when they separate by rank too: one-sided exact Mann-Whitney p at most this. The z-test trusts the
#: Gaussian noise model; a shared machine's boots are bimodal (a process lands fast or ~35 % slow), where
#: a few boots can pass 3 SE by luck, and the check is repeated after every boot. With it a boundary needs
#: at least 6 + 7 boots (benchmarks/bench_bisect_trace.py: wrong culprits 3 % -> 1 % or less at +30 %).
_CONFIRM_RANK_P = 0.001
#: ... unless the step is this many boot sds wide (the bimodal gap above is ~2 sd; its tail reaches 4-5)
_RANK_EXEMPT_Z = 8.0


def _median_var_factor(n: int) -> float:
    """Var(median of n normal draws) / (sigma^2 / n)."""
    table = {1: 1.0, 2: 1.0, 3: 1.35, 4: 1.19, 5: 1.44, 6: 1.29, 7: 1.47}
    return table.get(n, math.pi / 2)


def _rank_p(hi: np.ndarray, lo: np.ndarray, *, greater: bool) -> float:
    """One-sided exact Mann-Whitney p that ``hi`` sits above ``lo`` (below, when not ``greater``)."""
    res = _st.mannwhitneyu(hi, lo, alternative="greater" if greater else "less", method="exact")
    return float(res.pvalue)


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


# "hopeless" only when even the largest shift the data allow (the references' difference + 2 SE) needs more
# than this many times the budget: judged on the point estimate, early boots that showed two references 1 %
# apart (really 12 % under 17 % noise) called a findable search hopeless after 9 runs
HOPELESS_FACTOR = 2.0

@dataclass
class _Fit:
    post: np.ndarray  # length N+1: [no shift, c=1..N]
    hyper_w: np.ndarray  # weights over the (tau, rho) grid
    sigma: float  # run sd, 100*log units
    tau_eff: float  # posterior mean of sqrt(tau^2 + rho^2)
    delta_mean: np.ndarray  # per c (index 1..N; index 0 unused): posterior mean of delta
    delta_sd: np.ndarray


def _fit(n_pos: int, obs: Sequence[_Obs], effect_prior: float, p_no_shift: float) -> _Fit:
    """Exact posterior over the change point, averaged over the (tau, rho) grid."""
    N = n_pos - 1
    if not obs:
        post = np.empty(N + 1)
        post[0] = p_no_shift
        post[1:] = (1 - p_no_shift) / N
        zeros = np.zeros(N + 1)
        return _Fit(post, np.full(len(_TAU_GRID) * len(_RHO_GRID), 1 / (len(_TAU_GRID) * len(_RHO_GRID))),
                    0.0, 0.0, zeros, zeros + effect_prior)
    y = np.array([o.zmed for o in obs])
    y -= y[0]
    ns = np.array([len(o.samples) for o in obs])
    pos = np.array([o.position for o in obs])
    ss = sum(o.ss for o in obs)
    dof = int((ns - 1).sum())
    # E[sigma^2] under a Jeffreys prior: SS/(dof-2) -- not overconfident on the few runs of early batches.
    sigma = math.sqrt(ss / (dof - 2)) if dof > 2 else 0.0
    run_var = np.array([_median_var_factor(int(n)) * sigma**2 / n for n in ns])

    nb = len(obs)
    t = np.arange(nb, dtype=float)
    tmin = np.minimum.outer(t, t)
    spread = 1.4826 * float(np.median(np.abs(y - np.median(y)))) if nb > 2 else 0.0
    grid = _TAU_GRID + tuple(g for g in _TAU_WIDE if g <= 2.0 * max(spread, sigma))
    taus = np.repeat(np.array(grid), len(_RHO_GRID))
    rhos = np.tile(np.array(_RHO_GRID), len(grid))
    H = len(taus)
    Sig = (rhos[:, None, None] ** 2) * tmin[None] + np.eye(nb)[None] * (taus[:, None, None] ** 2 + run_var[None, :, None])
    # Right-hand sides: [1, y, s_1..s_N] with s_c = 1[pos >= c].
    S = (pos[:, None] >= np.arange(1, N + 1)[None, :]).astype(float)  # nb x N
    R = np.concatenate([np.ones((nb, 1)), y[:, None], S], axis=1)
    L = np.linalg.cholesky(Sig)
    logdet = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)  # H
    PR = np.linalg.solve(Sig, np.broadcast_to(R, (H,) + R.shape))  # H x nb x (N+2)
    one, yv = R[:, 0], R[:, 1]
    A = PR[:, :, 0] @ one  # 1'P1
    B = PR[:, :, 1] @ one  # 1'Py
    C = PR[:, :, 1] @ yv  # y'Py
    a = np.einsum("hnc,nc->hc", PR[:, :, 2:], S)  # s'Ps   H x N
    b1 = PR[:, :, 2:].transpose(0, 2, 1) @ one  # 1'Ps
    by = PR[:, :, 2:].transpose(0, 2, 1) @ yv  # y'Ps
    s2 = effect_prior**2
    # Hypothesis 0 (no shift) = a = b1 = by = 0.
    a = np.concatenate([np.zeros((H, 1)), a], axis=1)
    b1 = np.concatenate([np.zeros((H, 1)), b1], axis=1)
    by = np.concatenate([np.zeros((H, 1)), by], axis=1)
    k = s2 / (1 + s2 * a)
    A_c = A[:, None] - k * b1**2
    B_c = B[:, None] - k * b1 * by
    C_c = C[:, None] - k * by**2
    logdet_c = logdet[:, None] + np.log1p(s2 * a)
    loglik = -0.5 * (logdet_c + np.log(A_c) + C_c - B_c**2 / A_c)  # H x (N+1)
    prior_c = np.empty(N + 1)
    prior_c[0] = p_no_shift
    prior_c[1:] = (1 - p_no_shift) / N
    lj = loglik + np.log(prior_c)[None, :]  # uniform prior over the grid
    m = lj.max()
    w = np.exp(lj - m)
    tot = w.sum()
    post = w.sum(axis=0) / tot
    hyper_w = w.sum(axis=1) / tot
    tau_eff = float(hyper_w @ np.sqrt(taus**2 + rhos**2))
    # Posterior of delta given c and the grid point: GLS with the prior on delta, mu flat.
    #   precision of delta = (s'Ps - (1'Ps)^2/1'P1) + 1/s^2, mean = (y'Ps - 1'Ps*1'Py/1'P1) / precision
    prec = a - b1**2 / A[:, None] + 1.0 / s2
    mean = (by - b1 * B[:, None] / A[:, None]) / prec
    wc = w / np.maximum(w.sum(axis=0, keepdims=True), 1e-300)  # weights over grid within each c
    dmean = (wc * mean).sum(axis=0)
    dvar = (wc * (1.0 / prec + mean**2)).sum(axis=0) - dmean**2
    return _Fit(post, hyper_w, sigma, tau_eff, dmean, np.sqrt(np.maximum(dvar, 0.0)))


# --------------------------------------------------------------------------------------------- the search


class Bisector:
    """Probabilistic bisection as a serialisable state machine (see the module docstring for the model).

    ``n_positions`` counts positions 0..N, i.e. it is N + 1 for a series of N entries.
    """

    def __init__(
        self,
        n_positions: int,
        *,
        confidence: float = 0.95,
        threshold_pct: float = 0.5,
        budget: Budget | None = None,
        runs_per_batch: int | None = None,
        initial_runs: int = 3,
        max_runs_per_batch: int = 10,
        boot_cost_runs: float = 1.0,
        ref_every: int = 2,
        build_penalty: float = 0.4,
        effect_prior_pct: float = 3.0,
        p_no_shift: float = 0.2,
        confirm_batches: int = 2,
        repeat_penalty: float = 0.0,
        seed: int = 0,
    ) -> None:
        if n_positions < 2:
            raise ValueError("need at least two positions (good reference 0 and bad reference N)")
        if not 0.5 < confidence < 1:
            raise ValueError("confidence must be in (0.5, 1)")
        if runs_per_batch is not None and runs_per_batch < 1:
            raise ValueError("runs_per_batch must be >= 1")
        self.n_positions = n_positions
        self.confidence = confidence
        self.threshold_pct = threshold_pct
        self.budget = budget or Budget()
        self.runs_per_batch = runs_per_batch
        self.initial_runs = initial_runs
        self.max_runs_per_batch = max_runs_per_batch
        self.boot_cost_runs = boot_cost_runs
        self.ref_every = ref_every
        self.build_penalty = build_penalty
        self.effect_prior_pct = effect_prior_pct
        self.p_no_shift = p_no_shift
        self.confirm_batches = confirm_batches
        self.repeat_penalty = repeat_penalty
        self.seed = seed
        self._obs: list[_Obs] = []
        self._skipped: dict[int, str] = {}
        self._stopped: str | None = None  # reason, once next_probe returned None
        self._status: Status = "running"
        self._fit_cache: tuple[int, _Fit] | None = None
        self._outliers: set[int] = set()

    # -- basic properties

    @property
    def n_entries(self) -> int:
        return self.n_positions - 1

    @property
    def runs(self) -> int:
        return sum(len(o.samples) for o in self._obs)

    @property
    def batches(self) -> int:
        return len(self._obs)

    @property
    def builds(self) -> int:
        return sum(1 for o in self._obs if o.build_cost > 0)

    @property
    def done(self) -> bool:
        return self._stopped is not None

    def _purpose(self, position: int) -> Purpose:
        if position == 0:
            return "reference-good"
        if position == self.n_entries:
            return "reference-bad"
        return "probe"

    # -- updates

    def observe(self, position: int, samples: Sequence[float], build_cost: float = 0.0) -> None:
        """Record one batch (one boot) of samples measured at ``position``."""
        self._check_position(position)
        vals = [float(x) for x in samples]
        if not vals:
            raise ValueError("a batch needs at least one sample")
        if any(not (math.isfinite(v) and v > 0) for v in vals):
            raise ValueError("samples must be positive finite numbers (times, ratios, ...)")
        if position in self._skipped:
            raise ValueError(f"position {position} was skipped: {self._skipped[position]}")
        self._obs.append(_Obs(position, vals, float(build_cost)))
        self._fit_cache = None
        self._stopped = None
        self._status = "running"

    def skip(self, position: int, reason: str = "failed to build") -> None:
        """Mark a position as unmeasurable (apply/build/run failed), like ``git bisect skip``."""
        self._check_position(position)
        self._skipped[position] = reason
        self._fit_cache = None
        self._stopped = None

    def _check_position(self, position: int) -> None:
        if not (isinstance(position, (int, np.integer)) and 0 <= position < self.n_positions):
            raise ValueError(f"position {position!r} out of range 0..{self.n_entries}")

    # -- inference

    def _ref_shift(self) -> float:
        """|median of the bad reference's boots - the good one's|, 100*log units (0 until both were measured):
        the shift the search has to place, whatever position looks likeliest while the mass is still spread."""
        N = self.n_positions - 1
        good = [o.zmed for o in self._obs if o.position == 0]
        bad = [o.zmed for o in self._obs if o.position == N]
        return abs(float(np.median(bad)) - float(np.median(good))) if good and bad else 0.0

    def _effect_scale(self) -> float:
        """The prior sd of the shift: ``effect_prior_pct``, or 1.5x the shift the two references show when that
        is larger. A fixed 3 % prior shrinks a 30 % regression toward zero and the fit then explains it as
        noise (a nightly's bisect read "noise 17 % per boot, shift 1.9 %: hopeless" on a clean +30 %)."""
        return max(self.effect_prior_pct, 1.5 * self._ref_shift())

    def _fit(self) -> _Fit:
        key = len(self._obs)
        if self._fit_cache is None or self._fit_cache[0] != key:
            scale = self._effect_scale()
            fit = _fit(self.n_positions, self._obs, scale, self.p_no_shift)
            self._outliers = self._screen(fit)
            if self._outliers:
                kept = [o for i, o in enumerate(self._obs) if i not in self._outliers]
                fit = _fit(self.n_positions, kept, scale, self.p_no_shift)
            self._fit_cache = (key, fit)
        return self._fit_cache[1]

    def _screen(self, fit: _Fit) -> set[int]:
        """Observations (indices) that disagree with the most likely step by more than ``_OUTLIER_K`` robust sd.

        A boot hit by a neighbour job or a cold cache can sit 5 % off while boots spread 0.3 %: in a Gaussian
        likelihood one such boot can move the culprit.  It is set aside (kept in the log and the state, shown
        in the result), so the position it measured looks unmeasured again and the search re-probes it.
        """
        obs = self._obs
        if len(obs) < _OUTLIER_MIN_OBS:
            return set()
        if fit.post[0] >= fit.post[1:].max():
            # judged against "no shift", the boots of a real step are the outliers: a few boots of a shifted
            # bad reference would be set aside and the refit would then confirm "no shift"
            return set()
        c = int(np.argmax(fit.post[1:])) + 1
        y = np.array([o.zmed for o in obs])
        bad = np.array([o.position >= c for o in obs])
        r = y.copy()
        for side in (False, True):
            if (bad == side).any():
                r[bad == side] -= np.median(y[bad == side])
        s = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        if s <= 0:
            return set()
        out = {int(i) for i in np.flatnonzero(np.abs(r) > _OUTLIER_K * s)}
        return out if len(out) <= len(obs) // 5 else set()

    def posterior(self) -> list[float]:
        """P(culprit = c) for c = 0..N, where index 0 means "no shift between good and bad" (sums to 1)."""
        return [float(p) for p in self._fit().post]

    def _shift_interval(self, fit: _Fit) -> tuple[float, float]:
        """95% interval (in %) of the shift, mixed over culprit positions (a shift exists)."""
        if not self._obs:
            return (-math.inf, math.inf)
        w = fit.post[1:] / max(fit.post[1:].sum(), 1e-300)
        m = float(w @ fit.delta_mean[1:])
        v = float(w @ (fit.delta_sd[1:] ** 2 + fit.delta_mean[1:] ** 2)) - m * m
        sd = math.sqrt(max(v, 0.0))
        return ((math.exp((m - 1.96 * sd) / 100) - 1) * 100, (math.exp((m + 1.96 * sd) / 100) - 1) * 100)

    def _segments(self) -> list[tuple[int, int]]:
        """Culprit ranges that measuring every non-skipped position could still separate."""
        measurable = [k for k in range(1, self.n_entries) if k not in self._skipped]
        bounds = [0] + measurable + [self.n_entries]
        return [(lo + 1, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def _hpd_range(self, post: np.ndarray) -> tuple[int, int]:
        p = post[1:] / max(post[1:].sum(), 1e-300)
        N = len(p)
        cs = np.concatenate([[0.0], np.cumsum(p)])
        best = (1, N)
        for width in range(1, N + 1):
            masses = cs[width:] - cs[:-width]
            i = int(np.argmax(masses))
            if masses[i] >= self.confidence - 1e-12:
                best = (i + 1, i + width)
                break
        return best

    # -- decisions

    def _unconfirmed(self, fit: _Fit) -> int | None:
        """A side of the most likely boundary (c-1 | c) that does not yet confirm it on its own.

        The posterior can pass ``confidence`` on evidence spread thin: one lucky boot next to a drifting
        reference, or an outlier boot (a neighbour job, a cold cache: +5 % where boots spread 0.3 %) that
        looks like a large step at its position. Before a culprit is named, the two positions at its
        boundary must each be seen in ``confirm_batches`` boots (outliers set aside), however large the
        step looks, and those boots alone must show the step: their means differ in the direction of the
        shift by at least ``_CONFIRM_Z`` boot-noise standard errors. Otherwise the side with fewer boots is
        measured again.
        """
        if self.confirm_batches <= 1:
            return None
        c = int(np.argmax(fit.post[1:])) + 1
        sides = [k for k in (c - 1, c) if k not in self._skipped]
        seen = {k: [o.zmed for i, o in enumerate(self._obs) if o.position == k and i not in self._outliers]
                for k in sides}
        for k in sides:
            if len(seen[k]) < self.confirm_batches:
                return k
        if len(sides) < 2:
            return None
        lo, hi = (np.asarray(seen[k]) for k in sides)
        _, sd = self._boot_sd(fit)
        step = float(hi.mean() - lo.mean()) * (1.0 if fit.delta_mean[c] >= 0 else -1.0)

        def fewer() -> int:
            if lo.size == hi.size:  # a random side, so the two never sit in fixed slots of a periodic machine
                return sides[int(self._rng().integers(2))]
            return sides[0] if lo.size < hi.size else sides[1]

        if sd > 0 and step < _CONFIRM_Z * sd * math.sqrt(1.0 / lo.size + 1.0 / hi.size):
            return fewer()
        # a step many boot sds wide cannot come from the shape of the noise: no rank check (noise-free data)
        wsd = self._within_sd()
        exempt = step >= _RANK_EXEMPT_Z * (wsd if math.isfinite(wsd) else sd)
        if not exempt and _rank_p(hi, lo, greater=fit.delta_mean[c] >= 0) > _CONFIRM_RANK_P:
            return fewer()
        return None

    def _boots_at(self, position: int) -> int:
        return sum(1 for o in self._obs if o.position == position)

    def _boot_sd(self, fit: _Fit) -> tuple[int, float]:
        """(typical runs per boot n, sd of one boot's median): boot and drift terms plus its runs' share."""
        n = max(1, round(float(np.mean([len(o.samples) for o in self._obs]))))
        return n, math.sqrt(fit.tau_eff**2 + _median_var_factor(n) * fit.sigma**2 / n)

    def _rng(self) -> np.random.Generator:
        """Randomness for the order of boots, a function of the state: a resumed search makes the same picks."""
        return np.random.default_rng([self.seed, len(self._obs), len(self._skipped)])

    def _within_sd(self) -> float:
        """Plain sd of boot medians around their own position's mean, pooled over positions with 2+ boots
        (outliers kept: a heavy tail should widen it; the model's tau can sit well below it). inf until
        there are 5 degrees of freedom (then the model's sd stands in)."""
        by: dict[int, list[float]] = {}
        for o in self._obs:
            by.setdefault(o.position, []).append(o.zmed)
        groups = [np.asarray(v) for v in by.values() if len(v) >= 2]
        dof = sum(g.size - 1 for g in groups)
        if dof < 5:
            return math.inf
        return math.sqrt(sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / dof)

    def _runs_per_batch(self, fit: _Fit) -> int:
        if self.runs_per_batch is not None:
            return self.runs_per_batch
        dof = sum(len(o.samples) - 1 for o in self._obs)
        if dof < 4:
            return self.initial_runs
        if fit.tau_eff <= 0:
            return self.max_runs_per_batch
        n = math.sqrt(self.boot_cost_runs) * fit.sigma / fit.tau_eff
        return int(min(self.max_runs_per_batch, max(1, round(n))))

    def _stop_reason(self, fit: _Fit) -> tuple[Status, str] | None:
        post = fit.post
        pc = post[1:]
        if post[0] >= self.confidence:
            return "no_shift", f"P(no shift) = {post[0]:.3f} >= {self.confidence}"
        lo_ci, hi_ci = self._shift_interval(fit)
        N = self.n_entries
        # the interval says something about the data only once both references were measured (twice each);
        # before that it is the prior's, and a threshold wider than the prior (30 %) would stop at once
        seen_refs = min(self._boots_at(0), self._boots_at(N)) >= 2
        if self.threshold_pct > 0 and seen_refs and -self.threshold_pct < lo_ci and hi_ci < self.threshold_pct:
            return "no_shift", (f"the shift between the references is within +-{self.threshold_pct}% "
                                f"(95% interval {lo_ci:+.2f}..{hi_ci:+.2f}%)")
        if pc.max() >= self.confidence and self._obs and self._unconfirmed(fit) is None:
            return "found", f"P(culprit) = {pc.max():.3f} >= {self.confidence}"
        # Can probing still get there?  Only if the mass can concentrate on one position.
        if self._skipped:
            segs = self._segments()
            masses = [pc[lo - 1:hi].sum() for lo, hi in segs]
            j = int(np.argmax(masses))
            lo, hi = segs[j]
            within = pc[lo - 1:hi].max() / max(masses[j], 1e-300)
            if hi > lo and masses[j] >= self.confidence and within < self.confidence:
                return "ambiguous", (f"positions {lo}..{hi} cannot be told apart: skipped "
                                     f"{sorted(k for k in self._skipped if lo <= k < hi)}")
        b = self.budget
        if b.max_runs is not None and self.runs >= b.max_runs:
            return "ambiguous", f"run budget spent ({self.runs} runs)"
        if b.max_batches is not None and self.batches >= b.max_batches:
            return "ambiguous", f"batch budget spent ({self.batches} batches)"
        if 0 in self._skipped or self.n_entries in self._skipped:
            return "ambiguous", "a reference (position 0 or N) cannot be measured"
        return self._hopeless(fit)

    def boots_needed(self, fit: _Fit | None = None) -> int | None:
        """About how many boots naming a culprit of the size seen (at least ``threshold_pct``) takes here.

        From the noise estimated so far: one boot's sd (boot and drift terms plus its runs' share) against
        the shift; each of the ~log2(N) decisions needs the shift to stand out at ~2.5 sd with the references
        re-measured beside it. None before both references were seen twice.
        """
        fit = fit or self._fit()
        N = self.n_entries
        if min(self._boots_at(0), self._boots_at(N)) < 2:
            return None
        _, sd = self._boot_sd(fit)
        delta = self._hunted_shift(fit, sd)
        per = max(1.0, 2.0 * (2.5 * sd / delta) ** 2)
        return int(math.ceil((math.ceil(math.log2(max(N, 2))) + 2) * per * (1 + 1 / self.ref_every)))

    def _hunted_shift(self, fit: _Fit, sd: float) -> float:
        """The largest shift the data so far allow (100*log units): the references' difference plus two of its
        standard errors, the fit's shift, or the threshold. Early boots can show two references 1 % apart
        that differ by 12 % under 20 % noise; judged on the 1 %, a findable search looked 500x over budget."""
        ng, nb = self._boots_at(0), self._boots_at(self.n_entries)
        upper = self._ref_shift() + 2.0 * sd * math.sqrt(1.0 / max(ng, 1) + 1.0 / max(nb, 1))
        c = int(np.argmax(fit.post[1:])) + 1
        return max(self.threshold_pct, abs(float(fit.delta_mean[c])), upper)

    def _hopeless(self, fit: _Fit) -> tuple[Status, str] | None:
        """Stop at once, saying what it would take, when the run budget cannot be enough."""
        # judged once the outlier screen can work (a single wild boot must not make a search look hopeless),
        # and again after every boot: the references' interval narrows as they are re-measured
        if self.budget.max_runs is None or self.batches < _OUTLIER_MIN_OBS:
            return None
        need = self.boots_needed(fit)
        if need is None:
            return None
        n, sd = self._boot_sd(fit)
        if need * n > HOPELESS_FACTOR * self.budget.max_runs:
            shift = self._hunted_shift(fit, sd)
            return "ambiguous", (f"hopeless within the budget: the noise is {sd:.2g} % per boot, so naming even a "
                                 f"shift of {shift:.2g} % "
                                 f"among {self.n_entries} entries needs about {need} boots ({need * n} runs); the budget is "
                                 f"{self.budget.max_runs} runs")
        return None

    def next_probe(self, build_cost: Callable[[int], float] | Mapping[int, float] | None = None) -> Probe | None:
        """The next batch to measure, or ``None`` when the search is over (then see :meth:`result`).

        ``build_cost(position)`` is what measuring there costs in builds now (0: built or python-only).
        """
        def cost_of(k: int) -> float:
            if isinstance(build_cost, Mapping):
                return float(build_cost.get(k, 1.0))
            return 0.0 if build_cost is None else float(build_cost(k))
        fit = self._fit()
        stop = self._stop_reason(fit)
        if stop is not None:
            self._status, self._stopped = stop
            return None
        n = self._runs_per_batch(fit)
        N = self.n_entries
        if self.budget.max_runs is not None:
            n = max(1, min(n, self.budget.max_runs - self.runs))

        # References first, then in the same period as the probes.
        n_good, n_bad = self._boots_at(0), self._boots_at(N)
        if n_good == 0:
            return Probe(0, n, "reference-good", "first measurement of the good reference")
        if n_bad == 0:
            return Probe(N, n, "reference-bad", "first measurement of the bad reference")
        since_ref = 0
        for o in reversed(self._obs):
            if o.position in (0, N):
                break
            since_ref += 1
        # the references come back after ref_every probes, or one earlier at random: a fixed cycle (ref, A, B,
        # ref, A, B) puts A and B in the same slots of any periodic load on the machine, for dozens of boots
        due = since_ref >= self.ref_every or (since_ref == self.ref_every - 1 and since_ref > 0
                                              and self._rng().random() < 0.5)
        if fit.post[0] > 0.2 or due or N == 1:
            last = {0: -1, N: -1}
            for i, o in enumerate(self._obs):
                if o.position in last:
                    last[o.position] = i
            pick = 0 if last[0] <= last[N] else N
            why = (f"is there a shift at all? P(no shift) = {fit.post[0]:.2f}" if fit.post[0] > 0.2
                   else "re-measure the reference in the same period as the probes")
            return Probe(pick, n, self._purpose(pick), why)

        confirm = self._unconfirmed(fit) if fit.post[1:].max() >= self.confidence else None
        if confirm is not None:
            return Probe(confirm, n, self._purpose(confirm), f"confirm the boundary at {confirm} in another boot")

        # Probe: where the posterior (given a shift exists) splits best, minus the build penalty.
        pc = fit.post[1:] / max(fit.post[1:].sum(), 1e-300)
        F = np.cumsum(pc)  # F[k-1] = P(c <= k) = P(position k is bad)
        cand = [k for k in range(1, N) if k not in self._skipped]
        if self.budget.max_builds is not None and self.builds >= self.budget.max_builds:
            cand = [k for k in cand if cost_of(k) <= 0]
        if not cand:
            self._status, self._stopped = "ambiguous", "no measurable position left within the budget"
            return None
        Fk = F[np.array(cand) - 1]
        info = _binary_entropy(Fk)
        if info.max() < 1e-3:
            self._status, self._stopped = "ambiguous", "no measurable position would split the posterior"
            return None
        costs = np.array([cost_of(k) for k in cand])
        # A free probe wins over a fresh build unless the build splits the posterior clearly better;
        # never trade for a probe that would tell next to nothing.
        # Alternate the positions that share the boundary (A B A B, not A A A) so drift does not pile up on one.
        last_probe = next((o.position for o in reversed(self._obs) if o.position not in (0, N)), None)
        repeat = np.array([k == last_probe for k in cand], dtype=float)
        score = np.where(info >= 0.2 * info.max(),
                         info - self.build_penalty * costs - self.repeat_penalty * repeat, -np.inf)
        order = sorted(range(len(cand)), key=lambda i: (-round(float(score[i]), 9), abs(Fk[i] - 0.5), cand[i]))
        i = order[0]
        k = cand[i]
        return Probe(k, n, "probe", f"P(position {k} is bad) = {Fk[i]:.3f}, build cost {costs[i]:g}")

    def result(self) -> BisectResult:
        fit = self._fit()
        post = fit.post
        pc = post[1:]
        map_c = int(np.argmax(pc)) + 1
        status: Status = self._status if self._stopped is not None else "running"
        reason = self._stopped or "search not finished"
        if self._stopped is None:
            st = self._stop_reason(fit)
            if st is not None:
                status, reason = st
        culprit = map_c if status == "found" else None
        order = np.argsort(-pc, kind="stable")
        suspects = [(int(c) + 1, float(pc[c])) for c in order[:4] if int(c) + 1 != map_c][:3]
        rng: tuple[int, int] | None = None
        if status in ("ambiguous", "running"):
            rng = self._hpd_range(post)
            if status == "ambiguous" and self._skipped:
                for lo, hi in self._segments():
                    if lo <= map_c <= hi and hi > lo:
                        rng = (min(rng[0], lo), max(rng[1], hi))
        dm, ds = float(fit.delta_mean[map_c]), float(fit.delta_sd[map_c])
        shift = (math.exp(dm / 100) - 1) * 100 if self._obs else None
        ci = ((math.exp((dm - 1.96 * ds) / 100) - 1) * 100, (math.exp((dm + 1.96 * ds) / 100) - 1) * 100) if self._obs else None
        F = np.cumsum(pc)
        logs = [float(np.median(o.samples)) for o in self._obs]
        steps = [
            Step(i, o.position, self._purpose(o.position), len(o.samples), logs[i],
                 float(F[o.position - 1]) if o.position > 0 else 0.0)
            for i, o in enumerate(self._obs)
        ]
        return BisectResult(
            status=status,
            culprit=culprit,
            probability=float(pc[map_c - 1]),
            most_likely=map_c,
            p_no_shift=float(post[0]),
            suspects=suspects,
            ambiguous_range=rng,
            shift_pct=shift,
            shift_ci_pct=ci,
            below_threshold=bool(shift is not None and abs(shift) < self.threshold_pct),
            skipped=dict(sorted(self._skipped.items())),
            steps=steps,
            runs=self.runs,
            batches=self.batches,
            builds=self.builds,
            reason=reason,
            outliers=sorted(int(i) for i in self._outliers),
            threshold_pct=self.threshold_pct,
        )

    # -- persistence

    def _config(self) -> dict[str, Any]:
        return {
            "n_positions": self.n_positions,
            "confidence": self.confidence,
            "threshold_pct": self.threshold_pct,
            "budget": asdict(self.budget),
            "runs_per_batch": self.runs_per_batch,
            "initial_runs": self.initial_runs,
            "max_runs_per_batch": self.max_runs_per_batch,
            "boot_cost_runs": self.boot_cost_runs,
            "ref_every": self.ref_every,
            "build_penalty": self.build_penalty,
            "effect_prior_pct": self.effect_prior_pct,
            "p_no_shift": self.p_no_shift,
            "confirm_batches": self.confirm_batches,
            "repeat_penalty": self.repeat_penalty,
            "seed": self.seed,
        }

    def to_json(self) -> str:
        return json.dumps({
            "kind": "vpatch-bisect",
            "version": STATE_VERSION,
            "config": self._config(),
            "observations": [{"position": o.position, "samples": o.samples, "build_cost": o.build_cost}
                             for o in self._obs],
            "skipped": {str(k): v for k, v in self._skipped.items()},
        }, indent=None, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Bisector:
        d = json.loads(text)
        if d.get("kind") != "vpatch-bisect" or d.get("version") != STATE_VERSION:
            raise ValueError("not a vpatch bisect state (or an unsupported version)")
        cfg = dict(d["config"])
        cfg["budget"] = Budget(**cfg["budget"])
        n = cfg.pop("n_positions")
        bis = cls(n, **cfg)
        for k, v in d["skipped"].items():
            bis._skipped[int(k)] = v
        for o in d["observations"]:
            bis._obs.append(_Obs(int(o["position"]), [float(x) for x in o["samples"]], float(o["build_cost"])))
        return bis


def run_bisect(
    bisector: Bisector,
    oracle: Oracle,
    *,
    save: Callable[[str], None] | None = None,
    on_step: Callable[[Probe, list[float] | None], None] | None = None,
    max_steps: int | None = None,
) -> BisectResult:
    """Drive ``bisector`` with ``oracle`` until it stops (or ``max_steps`` batches, for tests/resume)."""
    steps = 0
    while max_steps is None or steps < max_steps:
        probe = bisector.next_probe(build_cost=oracle.build_cost)
        if probe is None:
            break
        cost = oracle.build_cost(probe.position)
        try:
            samples = oracle.measure(probe.position, probe.n_runs)
        except ProbeFailed as exc:
            bisector.skip(probe.position, str(exc) or "failed")
            samples = None
        else:
            bisector.observe(probe.position, samples or [], build_cost=cost)
        if on_step is not None:
            on_step(probe, samples)
        if save is not None:
            save(bisector.to_json())
        steps += 1
    return bisector.result()
