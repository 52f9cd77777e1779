"""Pure statistics for ``vpatch validate``: summaries, comparisons, verdicts, claim checks.

Nothing here touches runners, git, files or the network; every function takes plain numbers
and returns frozen dataclasses, so results can be stored, re-rendered and tested offline.

The noise model the fork lives with (see DESIGN.md, "Noise has two levels"):

* within one server boot, decode TPOT repeats within σ ≈ 0.1–0.2 %;
* between boots, builds and days the mean drifts by ≈ 0.3 %.

Runs inside one boot are therefore *not* independent replicates of "prefix A": they share the
boot's offset. The replication unit is the boot. :func:`compare` is the Pinpoint-style test on
two lists of independent samples (use it on boot medians, kernel timings or anything else that
is genuinely independent); :func:`compare_boots` reduces each boot to its median first and, when
the boots were interleaved A B A B …, tests the paired log-ratios. Sequential (adaptive) sampling
lives in :mod:`vpatch.validation.sampling`.

Verdicts are always one of ``better``, ``worse``, ``same`` or ``unknown``: "different" needs
p ≤ alpha, "same" needs the whole confidence interval of the change inside ±``same_band_pct``,
and everything else is an honest "unknown".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
from scipy import special as _sp
from scipy import stats as _st

__all__ = [
    "Verdict",
    "Summary",
    "summarize",
    "format_value",
    "Comparison",
    "compare",
    "compare_boots",
    "boot_medians",
    "verdict_for",
    "Paired",
    "mcnemar_exact",
    "newcombe_paired_ci",
    "ClaimCheck",
    "check_claim",
    "DEFAULT_SAME_BAND_PCT",
]

Verdict = Literal["better", "worse", "same", "unknown"]
ClaimStatus = Literal["met", "not-met", "contradicted", "unknown"]

#: Half-width (in %) of the "no change" band. The fork's patches claim 0.5–5 %; a change whose
#: whole CI lies within ±0.5 % is below anything worth a patch, so it is called "same".
DEFAULT_SAME_BAND_PCT = 0.5

#: Bootstrap resamples. 2,000 keeps percentile CI endpoints stable to ~0.01 % of the median on
#: the fork's data while costing about a millisecond for a dozen samples.
DEFAULT_RESAMPLES = 2000

_MINUS = "\u2212"  # typographic minus, as the fork's commit messages use


# --------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------


def _as_array(samples: Sequence[float], name: str, *, positive: bool) -> np.ndarray:
    """Return ``samples`` as a 1-D float array or raise a ValueError that says what is wrong."""
    if isinstance(samples, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of numbers, got a string")
    try:
        arr = np.asarray(list(samples), dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a sequence of numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a flat sequence of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: no samples (an empty list cannot be summarized or compared)")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: sample {i} is {float(arr[i])}; NaN/inf usually means a failed run — drop it "
            "or re-run the boot"
        )
    if positive and (arr <= 0).any():
        i = int(np.flatnonzero(arr <= 0)[0])
        raise ValueError(
            f"{name}: sample {i} is {float(arr[i])}; ratios and percent changes need positive values "
            "(latencies, throughputs)"
        )
    return arr


def _check_alpha(alpha: float) -> None:
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_confidence(confidence: float) -> None:
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _check_band(band: float) -> None:
    if not (band >= 0.0 and math.isfinite(band)):
        raise ValueError(f"same_band_pct must be a finite number ≥ 0, got {band!r}")


# --------------------------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------------------------


def _signed(x: float, decimals: int) -> str:
    s = f"{abs(x):.{decimals}f}"
    if float(s) == 0.0:
        return s
    return ("+" if x > 0 else _MINUS) + s


def _pct_decimals(*values: float) -> int:
    """One decimal for effects ≥ 1 %, two below (a 0.6 % effect needs its second digit)."""
    finite = [abs(v) for v in values if math.isfinite(v)]
    return 1 if finite and max(finite) >= 1.0 else 2


def _fmt_pct_bound(x: float, decimals: int) -> str:
    if math.isinf(x):
        return "−∞" if x < 0 else "+∞"
    return _signed(x, decimals)


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    if p < 1e-4:
        return "< 0.0001"
    if p < 0.01:
        return f"{p:.4f}"
    return f"{p:.2f}"


def _value_decimals(*values: float) -> int:
    """Decimals that show ~4 significant digits of the largest value (15.20, 1234, 0.1234)."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not finite:
        return 2
    mag = math.floor(math.log10(max(finite)))
    return max(0, min(6, 3 - mag))


def _spread_decimals(spread: float) -> int:
    """Decimals for a spread: one significant digit, two when it starts with a 1 (0.15, 0.03)."""
    if not math.isfinite(spread) or spread <= 0:
        return 2
    mag = math.floor(math.log10(spread))
    lead = int(spread / 10.0**mag)
    return max(0, min(6, -mag + (1 if lead == 1 else 0)))


def _finite_or_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Location and spread of one list of samples; the CI is for the median (bootstrap)."""

    n: int
    median: float
    mean: float
    stdev: float  # sample standard deviation (ddof=1); 0.0 when n == 1
    min: float
    max: float
    ci_low: float
    ci_high: float
    confidence: float

    @property
    def rel_stdev_pct(self) -> float:
        """Coefficient of variation in % of the mean (the "σ 0.15 %" of the design notes)."""
        return 100.0 * self.stdev / abs(self.mean) if self.mean else math.inf

    def as_dict(self) -> dict[str, Any]:
        return _finite_or_none(asdict(self))


def _bootstrap_medians(x: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    return np.median(x[idx], axis=1)


def summarize(
    samples: Sequence[float],
    *,
    confidence: float = 0.95,
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> Summary:
    """Summarize ``samples``: n, median, mean, stdev, min, max and a bootstrap CI of the median.

    The CI is the percentile bootstrap of the median (``n_resamples`` resamples, fixed ``seed``
    so a stored result re-renders identically). With one sample the CI collapses to the value.
    Values may be any finite numbers (negative allowed); raises ValueError on empty input/NaN.
    """
    _check_confidence(confidence)
    x = _as_array(samples, "samples", positive=False)
    med = float(np.median(x))
    if x.size == 1:
        lo = hi = med
    else:
        meds = _bootstrap_medians(x, n_resamples, np.random.default_rng(seed))
        q = (1.0 - confidence) / 2.0
        lo, hi = (float(v) for v in np.quantile(meds, [q, 1.0 - q]))
    return Summary(
        n=int(x.size),
        median=med,
        mean=float(x.mean()),
        stdev=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        min=float(x.min()),
        max=float(x.max()),
        ci_low=lo,
        ci_high=hi,
        confidence=confidence,
    )


def format_value(summary: Summary, unit: str = "") -> str:
    """Render a summary pyperf-style: ``"14.21 ms ± 0.03 (n=12)"`` — median ± sample stdev.

    Decimals follow the spread (one significant digit, two when it starts with 1), so the
    number never claims more precision than the runs show.
    """
    d = _spread_decimals(summary.stdev) if summary.n > 1 else _value_decimals(summary.median)
    u = f" {unit}" if unit else ""
    if summary.n == 1:
        return f"{summary.median:.{d}f}{u} (n=1)"
    return f"{summary.median:.{d}f}{u} ± {summary.stdev:.{d}f} (n={summary.n})"


# --------------------------------------------------------------------------------------------
# comparisons of two prefixes on one metric
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """B versus A on one metric. ``change_pct`` and its CI are signed (B − A) / A in %.

    ``n_a``/``n_b`` count the replication units the test used: samples for :func:`compare`,
    boots for :func:`compare_boots`. ``p_value`` is the one the verdict used (already adjusted
    for repeated looks when it comes from the adaptive sampler; ``test`` says so).
    """

    metric: str
    unit: str
    n_a: int
    n_b: int
    median_a: float
    median_b: float
    change_pct: float
    ci_low_pct: float
    ci_high_pct: float
    p_value: float
    test: str
    verdict: Verdict
    lower_is_better: bool
    alpha: float
    confidence: float = 0.95
    same_band_pct: float = DEFAULT_SAME_BAND_PCT
    paired: bool = False
    note: str = ""  # why the sampler stopped short, outlier pairs re-measured, …

    @property
    def significant(self) -> bool:
        return self.p_value <= self.alpha

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (non-finite floats become None)."""
        return _finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        """Inverse of :meth:`as_dict` (None CI bounds come back as ∓inf, p as NaN)."""
        data = dict(d)
        if data.get("ci_low_pct") is None:
            data["ci_low_pct"] = -math.inf
        if data.get("ci_high_pct") is None:
            data["ci_high_pct"] = math.inf
        if data.get("p_value") is None:
            data["p_value"] = math.nan
        return cls(**data)

    def describe(self) -> str:
        """One line in the fork's commit-message shape, e.g.

        ``TPOT 14.63 → 14.21 ms (−2.9 %, 95 % CI −3.1…−2.7 %, p 0.0004, n 12+12): better``
        """
        vd = _value_decimals(self.median_a, self.median_b)
        pd = _pct_decimals(self.change_pct, self.ci_low_pct, self.ci_high_pct)
        conf = f"{self.confidence * 100:.4g}"
        head = f"{self.metric} " if self.metric else ""
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"{head}{self.median_a:.{vd}f} → {self.median_b:.{vd}f}{unit} "
            f"({_signed(self.change_pct, pd)} %, {conf} % CI "
            f"{_fmt_pct_bound(self.ci_low_pct, pd)}…{_fmt_pct_bound(self.ci_high_pct, pd)} %, "
            f"p {_fmt_p(self.p_value)}, n {self.n_a}+{self.n_b}): {self.verdict}"
            + (f" ({self.note})" if self.note else "")
        )


def verdict_for(
    p_value: float,
    change_pct: float,
    ci_low_pct: float,
    ci_high_pct: float,
    *,
    alpha: float,
    same_band_pct: float,
    lower_is_better: bool,
) -> Verdict:
    """The one verdict rule every comparison uses.

    * ``better``/``worse``: p ≤ alpha, direction from the sign of the change
      (for ``lower_is_better`` metrics a negative change is better);
    * ``same``: not significant and the whole CI of the change lies inside ±``same_band_pct``;
    * ``unknown``: anything else (including a significant test with a zero point change, which
      only happens when distributions differ in shape but not in median).
    """
    if math.isfinite(p_value) and p_value <= alpha and change_pct != 0.0:
        improved = (change_pct < 0.0) == lower_is_better
        return "better" if improved else "worse"
    if -same_band_pct <= ci_low_pct and ci_high_pct <= same_band_pct:
        return "same"
    return "unknown"


def compare(
    a: Sequence[float],
    b: Sequence[float],
    *,
    lower_is_better: bool = True,
    alpha: float = 0.01,
    same_band_pct: float = DEFAULT_SAME_BAND_PCT,
    metric: str = "",
    unit: str = "",
    seed: int = 0,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> Comparison:
    """Compare two lists of *independent* positive samples, Pinpoint-style.

    Test: ``p = min(p_MannWhitneyU, p_KolmogorovSmirnov)``, both two-sided, scipy's exact
    distributions for small samples. This is what Chromeperf's Pinpoint does: MWU catches a
    location shift, KS a change of shape (e.g. a bimodal slowdown). Taking the minimum of two
    p-values is slightly liberal (at most 2·alpha; in practice ≈ 1.2–1.5·alpha because the two
    tests are strongly correlated) — ``benchmarks/bench_stats.py`` measures it.

    Effect: ``change_pct = 100·(median_b / median_a − 1)`` with a percentile-bootstrap CI of the
    ratio of medians (A and B resampled independently, fixed ``seed``).

    Do not feed it runs pooled from a few boots: runs within a boot share the boot's offset, so
    the test sees pseudo-replicates and its false-positive rate explodes. Use
    :func:`compare_boots` for that.

    Note the floor: with 3 vs 3 samples the smallest two-sided MWU p is 0.1, so no verdict other
    than "unknown" (or "same" with a tight CI) is possible at alpha = 0.01.
    """
    _check_alpha(alpha)
    _check_confidence(confidence)
    _check_band(same_band_pct)
    xa = _as_array(a, "a", positive=True)
    xb = _as_array(b, "b", positive=True)
    med_a, med_b = float(np.median(xa)), float(np.median(xb))
    change = 100.0 * (med_b / med_a - 1.0)

    if xa.size == 1 and xb.size == 1:
        p = 1.0
    else:
        with warnings.catch_warnings():
            # ks_2samp falls back from its exact to its asymptotic method on some tied inputs
            # and says so with a RuntimeWarning; the fallback is the documented behaviour.
            warnings.simplefilter("ignore", RuntimeWarning)
            p_mwu = float(_st.mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
            p_ks = float(_st.ks_2samp(xa, xb, alternative="two-sided").pvalue)
        p = min(p_mwu, p_ks)
        if not math.isfinite(p):  # all values identical on both sides
            p = 1.0

    if xa.size == 1 and xb.size == 1:
        lo, hi = -math.inf, math.inf  # no spread information at all: say so
    else:
        rng = np.random.default_rng(seed)
        ratios = _bootstrap_medians(xb, n_resamples, rng) / _bootstrap_medians(xa, n_resamples, rng)
        q = (1.0 - confidence) / 2.0
        lo, hi = (float(v) for v in 100.0 * (np.quantile(ratios, [q, 1.0 - q]) - 1.0))

    verdict = verdict_for(
        p, change, lo, hi, alpha=alpha, same_band_pct=same_band_pct, lower_is_better=lower_is_better
    )
    return Comparison(
        metric=metric,
        unit=unit,
        n_a=int(xa.size),
        n_b=int(xb.size),
        median_a=med_a,
        median_b=med_b,
        change_pct=change,
        ci_low_pct=lo,
        ci_high_pct=hi,
        p_value=p,
        test="min(Mann-Whitney U, Kolmogorov-Smirnov)",
        verdict=verdict,
        lower_is_better=lower_is_better,
        alpha=alpha,
        confidence=confidence,
        same_band_pct=same_band_pct,
        paired=False,
    )


def boot_medians(boots: Sequence[Sequence[float]], name: str = "boots") -> np.ndarray:
    """Reduce each boot (a list of runs from one server start) to its median."""
    if isinstance(boots, (str, bytes)) or len(boots) == 0:
        raise ValueError(f"{name}: no boots (need at least one list of run samples)")
    out = np.empty(len(boots))
    for i, bt in enumerate(boots):
        x = _as_array(bt, f"{name}[{i}]", positive=True)
        out[i] = x[0] if x.size == 1 else float(np.median(x))
    return out


def _paired_t_log(
    ma: np.ndarray, mb: np.ndarray, confidence: float
) -> tuple[float, float, float, float]:
    """Paired t-test on d_i = ln(b_i / a_i): (p, change %, CI low %, CI high %)."""
    d = np.log(mb) - np.log(ma)
    n = d.size
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # identical ratios in every pair: no noise estimate, the data speak alone
        p = 1.0 if mean == 0.0 else 0.0
        lo = hi = mean
    else:
        se = sd / math.sqrt(n)
        tstat = mean / se
        p = float(2.0 * _sp.stdtr(n - 1, -abs(tstat)))  # = 2·t.sf, without scipy.stats' overhead
        h = float(_sp.stdtrit(n - 1, 0.5 + confidence / 2.0)) * se
        lo, hi = mean - h, mean + h
    pct = lambda v: 100.0 * math.expm1(v)  # noqa: E731
    return p, pct(mean), pct(lo), pct(hi)


def compare_boots(
    a_boots: Sequence[Sequence[float]],
    b_boots: Sequence[Sequence[float]],
    *,
    lower_is_better: bool = True,
    alpha: float = 0.01,
    same_band_pct: float = DEFAULT_SAME_BAND_PCT,
    metric: str = "",
    unit: str = "",
    seed: int = 0,
    confidence: float = 0.95,
    paired: bool | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> Comparison:
    """Compare two prefixes measured over several boots; the boot is the replication unit.

    Each argument is a list of boots in time order, each boot a list of run samples from one
    server start. Every boot is reduced to its median (runs inside a boot share its offset, so
    they are not independent evidence).

    **Paired (default when both sides have the same number ≥ 2 of boots, i.e. A B A B …):**
    boot i of A is paired with boot i of B, adjacent in time, and the test is a one-sample
    t-test on ``d_i = ln(median_b_i / median_a_i)``; the effect is the geometric-mean ratio
    ``exp(mean d) − 1`` with its t confidence interval. Why a t-test on log ratios and not
    Wilcoxon signed-rank:

    * power at the sample sizes we can afford: the exact two-sided signed-rank p cannot go below
      ``2 / 2**n``, i.e. 0.0156 with 7 pairs, so at alpha = 0.01 Wilcoxon cannot say anything
      before 8 pairs (16 boots) — and after a sequential correction even later. The t-test on
      a 1 % shift with the fork's 0.3 % boot drift reaches p < 0.01 at about 5 pairs;
    * validity: a boot median is a median of runs that each average many decode steps, and the
      boot offset is a sum of many small causes (clocks, placement, allocator), so the pair
      differences are close to normal; the log makes ratios symmetric and unit-free;
    * failure mode: an outlier boot inflates the sample variance, which makes the t-test
      *more* conservative (lost power, not false alarms) — the safe direction.

    Pairing is valid even if the boots were not really interleaved (the differences are still
    i.i.d. with the right mean); interleaving is what removes the period-to-period drift.

    **Unpaired (lengths differ, one side has a single boot, or ``paired=False``):** the
    Pinpoint-style :func:`compare` on the two lists of boot medians.
    """
    _check_alpha(alpha)
    _check_confidence(confidence)
    _check_band(same_band_pct)
    ma = boot_medians(a_boots, "a_boots")
    mb = boot_medians(b_boots, "b_boots")
    can_pair = ma.size == mb.size and ma.size >= 2
    if paired is None:
        paired = can_pair
    elif paired and not can_pair:
        raise ValueError(
            f"paired comparison needs the same number (≥ 2) of boots on both sides, "
            f"got {ma.size} and {mb.size}"
        )
    if not paired:
        cmp = compare(
            ma.tolist(),
            mb.tolist(),
            lower_is_better=lower_is_better,
            alpha=alpha,
            same_band_pct=same_band_pct,
            metric=metric,
            unit=unit,
            seed=seed,
            confidence=confidence,
            n_resamples=n_resamples,
        )
        return replace(cmp, test="min(Mann-Whitney U, Kolmogorov-Smirnov) on boot medians")

    p, change, lo, hi = _paired_t_log(ma, mb, confidence)
    return Comparison(
        metric=metric,
        unit=unit,
        n_a=int(ma.size),
        n_b=int(mb.size),
        median_a=float(np.median(ma)),
        median_b=float(np.median(mb)),
        change_pct=change,
        ci_low_pct=lo,
        ci_high_pct=hi,
        p_value=p,
        test="paired t on log ratios of boot medians",
        verdict=verdict_for(
            p, change, lo, hi, alpha=alpha, same_band_pct=same_band_pct,
            lower_is_better=lower_is_better,
        ),
        lower_is_better=lower_is_better,
        alpha=alpha,
        confidence=confidence,
        same_band_pct=same_band_pct,
        paired=True,
    )


# --------------------------------------------------------------------------------------------
# paired accuracy (gsm8k): exact McNemar
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """Per-question accuracy of B versus A on the same questions (percentage points)."""

    metric: str
    n: int  # questions
    correct_a: int
    correct_b: int
    only_a: int  # A right, B wrong
    only_b: int  # B right, A wrong
    acc_a_pct: float
    acc_b_pct: float
    change_pts: float  # acc_b − acc_a, percentage points
    ci_low_pts: float
    ci_high_pts: float
    p_value: float
    test: str
    verdict: Verdict
    alpha: float
    confidence: float
    same_band_pts: float

    def as_dict(self) -> dict[str, Any]:
        return _finite_or_none(asdict(self))

    def describe(self) -> str:
        """e.g. ``gsm8k 85.7 → 85.1 % (−0.6 pts, 95 % CI −1.4…+0.2, p 0.15, discordant 14+20 of 1000): unknown``"""
        head = f"{self.metric} " if self.metric else ""
        conf = f"{self.confidence * 100:.4g}"
        return (
            f"{head}{self.acc_a_pct:.1f} → {self.acc_b_pct:.1f} % "
            f"({_signed(self.change_pts, 1)} pts, {conf} % CI "
            f"{_signed(self.ci_low_pts, 1)}…{_signed(self.ci_high_pts, 1)}, "
            f"p {_fmt_p(self.p_value)}, discordant {self.only_a}+{self.only_b} of {self.n}): "
            f"{self.verdict}"
        )


def _as_bools(x: Sequence[Any], name: str) -> np.ndarray:
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of booleans (or 0/1), got a string")
    vals = list(x)
    if not vals:
        raise ValueError(f"{name}: no questions")
    out = np.empty(len(vals), dtype=bool)
    for i, v in enumerate(vals):
        if isinstance(v, (bool, np.bool_)) or v in (0, 1):
            out[i] = bool(v)
        else:
            raise ValueError(f"{name}[{i}] is {v!r}; expected True/False or 0/1 per question")
    return out


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    den = 1.0 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)


def newcombe_paired_ci(
    both: int, only_a: int, only_b: int, neither: int, *, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval (percentage points) of acc_b − acc_a for paired answers, Newcombe's method 10.

    ``both``/``neither``: questions both prefixes answered right/wrong; ``only_a``/``only_b``: the
    discordant ones. Score-based, so it keeps a width at 0 discordant and stays inside ±100.
    """
    _check_confidence(confidence)
    counts = (both, only_a, only_b, neither)
    if any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"paired counts must be ≥ 0 and not all zero, got {counts}")
    n = sum(counts)
    z = float(_st.norm.ppf(0.5 + confidence / 2.0))
    pa, pb = (both + only_a) / n, (both + only_b) / n
    la, ua = _wilson(both + only_a, n, z)
    lb, ub = _wilson(both + only_b, n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    if margins == 0:
        phi = 0.0
    else:
        num: float = both * neither - only_a * only_b
        if num > 0:
            num = max(num - n / 2.0, 0.0)
        phi = num / math.sqrt(margins)
    d = pb - pa
    lo = d - math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    hi = d + math.sqrt(max(0.0, (ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2))
    return 100.0 * max(-1.0, lo), 100.0 * min(1.0, hi)


def mcnemar_exact(
    a_correct: Sequence[bool],
    b_correct: Sequence[bool],
    *,
    alpha: float = 0.01,
    same_band_pts: float = 1.0,
    confidence: float = 0.95,
    metric: str = "",
) -> Paired:
    """Exact McNemar test for per-question correctness of two prefixes on the same questions.

    ``a_correct[i]``/``b_correct[i]`` say whether prefix A/B answered question i correctly
    (lm-eval's per-sample output, e.g. gsm8k ``--limit 1000``). Only discordant questions carry
    information: with ``only_a`` = A right & B wrong and ``only_b`` = B right & A wrong, under
    H0 (no difference) ``only_b ~ Binomial(only_a + only_b, 1/2)``; the p-value is the exact
    two-sided binomial test.

    Why paired beats comparing two means with their ±1.1-point stderrs: both prefixes face the
    *same* 1000 questions, and most answers agree (both right or both wrong). The ±1.1 points
    quoted by lm-eval is the spread of *question difficulty* — it is shared by A and B and
    cancels in the difference. Two overlapping ±1.1 intervals say nothing (the difference of two
    independent means would have stderr ≈ 1.6 points, so only a > 4-point change would show);
    the paired difference has stderr ≈ sqrt(only_a + only_b) / n — about 0.55 points with 30
    discordant answers out of 1000 — three times tighter.

    Effect: ``change_pts = 100·(only_b − only_a)/n`` with Newcombe's hybrid score interval for a
    difference of paired proportions (Newcombe 1998, method 10: Wilson score intervals of both
    accuracies combined with the correlation of the paired answers). Unlike a Wald interval it
    does not collapse when no answer differs: 5 questions with 0 discordant give about ±43 points
    (nothing is known), 1000 questions with 0 discordant about ±0.3 points; 5 of 5 discordant
    give −100…−39, not −100…−100. Verdict: better/worse when p ≤ alpha; "same" only when that
    interval lies within ±``same_band_pts`` points (enough questions to exclude the band's edge);
    otherwise "unknown".
    """
    _check_alpha(alpha)
    _check_confidence(confidence)
    if not (same_band_pts >= 0 and math.isfinite(same_band_pts)):
        raise ValueError(f"same_band_pts must be a finite number ≥ 0, got {same_band_pts!r}")
    ca = _as_bools(a_correct, "a_correct")
    cb = _as_bools(b_correct, "b_correct")
    if ca.size != cb.size:
        raise ValueError(
            f"a_correct has {ca.size} questions and b_correct {cb.size}; McNemar needs the same "
            "questions in the same order on both sides"
        )
    n = int(ca.size)
    only_a = int(np.sum(ca & ~cb))
    only_b = int(np.sum(cb & ~ca))
    disc = only_a + only_b
    p = 1.0 if disc == 0 else float(_st.binomtest(only_b, disc, 0.5).pvalue)
    both = int(np.sum(ca & cb))
    lo, hi = newcombe_paired_ci(both, only_a, only_b, n - both - disc, confidence=confidence)
    change = 100.0 * (only_b - only_a) / n
    verdict = verdict_for(
        p, change, lo, hi, alpha=alpha, same_band_pct=same_band_pts, lower_is_better=False
    )
    return Paired(
        metric=metric,
        n=n,
        correct_a=int(ca.sum()),
        correct_b=int(cb.sum()),
        only_a=only_a,
        only_b=only_b,
        acc_a_pct=100.0 * float(ca.mean()),
        acc_b_pct=100.0 * float(cb.mean()),
        change_pts=change,
        ci_low_pts=lo,
        ci_high_pts=hi,
        p_value=p,
        test="exact McNemar (binomial on discordant pairs), Newcombe score interval",
        verdict=verdict,
        alpha=alpha,
        confidence=confidence,
        same_band_pts=same_band_pts,
    )


# --------------------------------------------------------------------------------------------
# claims
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimCheck:
    """Whether a measured comparison bears out what an entry claims."""

    status: ClaimStatus
    reason: str
    direction: str
    expected_pct: float | None
    measured_pct: float
    ci_low_pct: float
    ci_high_pct: float

    def as_dict(self) -> dict[str, Any]:
        return _finite_or_none(asdict(self))


def check_claim(
    expected_pct: float | None,
    direction: Literal["lower", "higher", "same"],
    cmp: Comparison,
    *,
    tolerance: float = 0.5,
) -> ClaimCheck:
    """Check a claim ("TPOT −2 %", "throughput higher", "same") against a :class:`Comparison`.

    ``direction`` is about the metric's *value* (TPOT "lower"), independent of which way is
    better. ``expected_pct`` is the claimed signed change in % (the series' ``change_pct``); its
    magnitude is what counts, and a sign that contradicts ``direction`` is an error. For
    ``direction="same"`` it is the tolerated band (default: the comparison's ``same_band_pct``).

    For "lower"/"higher" with claimed size m (CI = the comparison's CI of the change, in the
    claimed direction):

    * **contradicted** — significant change the other way;
    * **met** — significant in the claimed direction and the CI reaches at least
      ``tolerance·m`` (an effect bigger than claimed is met, the reason says so);
    * **not-met** — the whole CI is below ``tolerance·m`` in the claimed direction (the effect is
      absent or clearly smaller than claimed), significant or not;
    * **unknown** — otherwise (not enough data to tell).

    Without a size (``expected_pct=None``): met = significant in the claimed direction,
    not-met = verdict "same", else unknown.

    For "same": met = the CI lies within ±band; contradicted = significant and the CI lies
    entirely outside the band; not-met = significant but partly inside the band; else unknown.
    """
    if direction not in ("lower", "higher", "same"):
        raise ValueError(f"direction must be 'lower', 'higher' or 'same', got {direction!r}")
    if not (0.0 < tolerance <= 1.0):
        raise ValueError(f"tolerance must be in (0, 1], got {tolerance!r}")
    if expected_pct is not None and not math.isfinite(expected_pct):
        raise ValueError(f"expected_pct must be finite or None, got {expected_pct!r}")
    change, lo, hi = cmp.change_pct, cmp.ci_low_pct, cmp.ci_high_pct
    ci = f"{_signed(change, 2)} % (CI {_fmt_pct_bound(lo, 2)}…{_fmt_pct_bound(hi, 2)} %)"
    sig = cmp.significant

    def result(status: ClaimStatus, reason: str) -> ClaimCheck:
        return ClaimCheck(status, reason, direction, expected_pct, change, lo, hi)

    if direction == "same":
        band = cmp.same_band_pct if expected_pct is None else abs(expected_pct)
        if -band <= lo and hi <= band:
            return result("met", f"measured {ci} lies within ±{band:g} %")
        if sig and (lo > band or hi < -band):
            return result("contradicted", f"measured {ci} is outside ±{band:g} % (p {_fmt_p(cmp.p_value)})")
        if sig:
            return result("not-met", f"measured {ci} is a significant change, partly beyond ±{band:g} %")
        return result("unknown", f"measured {ci} is too wide to show it stays within ±{band:g} %")

    sign = -1.0 if direction == "lower" else 1.0
    if expected_pct is not None and expected_pct * sign < 0:
        raise ValueError(
            f"claimed change {expected_pct:+g} % contradicts direction {direction!r}; "
            "use a negative change for 'lower' and a positive one for 'higher'"
        )
    # Work in the claimed direction: positive = the way the claim says.
    c_est, c_lo, c_hi = sign * change, min(sign * lo, sign * hi), max(sign * lo, sign * hi)
    if sig and c_est < 0:
        return result("contradicted", f"measured {ci}: significant change opposite to the claimed {direction}")
    if expected_pct is None:
        if sig and c_est > 0:
            return result("met", f"measured {ci}: significantly {direction}")
        if cmp.verdict == "same":
            return result("not-met", f"measured {ci}: no change beyond ±{cmp.same_band_pct:g} %")
        return result("unknown", f"measured {ci}: not significant (p {_fmt_p(cmp.p_value)})")

    m = abs(expected_pct)
    need = tolerance * m
    claimed = f"claimed {_signed(sign * m, 2)} %"
    if c_hi < need:
        what = "smaller than" if sig and c_est > 0 else "no effect of the size"
        return result("not-met", f"measured {ci}: {what} {claimed} (whole CI below {tolerance:g}× the claim)")
    if sig and c_est > 0:
        if c_lo > m:
            return result("met", f"measured {ci}: larger than {claimed}")
        return result("met", f"measured {ci} is consistent with {claimed}")
    return result("unknown", f"measured {ci}: not significant (p {_fmt_p(cmp.p_value)}); {claimed}")
