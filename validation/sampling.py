"""Adaptive, interleaved A/B sampling on boots — a pure state machine a runner drives.

A runner loop looks like::

    s = AdaptiveComparison(metric="TPOT", unit="ms")
    while not s.done:
        side = s.next_side()                  # "a", "b", "a", "b", …
        runs = boot_and_measure(prefix[side])  # one server start, several runs
        s.add(side, runs)
        store.save(s.to_json())               # a crash loses at most the boot in flight
    print(s.decision().describe())

Design:

* **Boots, interleaved.** One call to :meth:`add` is one boot (server start / job) of one side;
  the boot is the replication unit (DESIGN.md, "Noise has two levels"). Sides alternate
  A B A B … (``order="abab"``) or A B B A A B … (``order="abba"``, which also cancels a linear
  drift within the session); :meth:`add` refuses a boot for the wrong side, so every look sees
  complete, time-adjacent pairs.
* **Looks.** After each complete pair from ``min_boots`` pairs on, the sampler looks: a paired
  t-test on log ratios of boot medians (:func:`~vpatch.validation.stats.compare_boots`). It stops
  on "better"/"worse" (significant), on "same" (the CI lies inside ±``same_band_pct``), or when
  the budget of ``max_boots`` boots per side is spent — then the verdict is whatever the last
  look says, "unknown" unless decisive. "Unknown" is an answer, not a failure.
* **Repeated looks are corrected.** Looking after every pair and stopping at the first p ≤ α
  would raise the false-positive rate several-fold (4.7 % instead of 1 % for looks at 3…12
  pairs; 3.3 % in the benchmark, where stopping on "same" ends some runs first). Two
  corrections:

  - ``correction="pocock"`` (default): a Pocock-style constant boundary — the same nominal
    level α′ at every look, chosen so that the probability of *any* look crossing it under H0
    is exactly α. Under the model the t-test assumes (i.i.d. normal log-ratios), the sequence of
    t statistics is pivotal — its null distribution does not depend on the unknown σ — so α′
    depends only on (looks, α) and is computed once by a seeded Monte Carlo of that sequence
    (:func:`pocock_nominal_alpha`). For 3…12 pairs at α = 0.01, α′ ≈ 0.0017 (Bonferroni: 0.001).
  - ``correction="bonferroni"``: α′ = α / number of planned looks. Valid without any
    distributional assumption about the look-to-look dependence, and more conservative.

  The Pocock level is the one the plain paired t-test needs; the outlier screen below changes the
  null distribution a little, and ``benchmarks/bench_stress.py`` measures the resulting A/A rate.

* **Outlier boots are re-measured, not averaged in.** A boot hit by a neighbour job, a thermal
  event or a cold page cache can be several percent off while the boot noise is 0.3 %: one such
  boot dominates a t-test (its variance swamps the others: power at +1 % fell to ~50 % with 5 %
  of boots shifted +5 %). Before each look the pairs are screened step-down: for r from the most
  pairs the screen may still set aside down to 1, the r-th furthest pair from the median is tested
  against the pairs less extreme than it (leave-r-out: its distance from their mean over their
  spread, a t distribution under the model, two-sided, Bonferroni over the k pairs, level
  ``outlier_alpha``); the first r that disagrees sets aside the r most extreme pairs. Step-down
  because two outlier boots hide each other from a leave-one-out test (the second inflates the
  spread the first is judged by). Pairs set aside are shown in the decision's note and fresh pairs
  are measured in their place, up to ``max_outliers``; the budget grows by as many pairs, and each
  pair set aside divides the level of the looks that follow (Bonferroni): the screen picks the most
  extreme pairs, so unpunished it would also trim honest noise into significance. pyperf warns
  about unstable runs and Pinpoint repeats attempts; this is the same idea made part of the test.
* **Saying early that the budget cannot do it.** At every look from 6 pairs on, the noise of the
  pair log-ratios (an optimistic, 80 %-lower bound of their spread without as many extreme pairs as
  the screen may still set aside) gives the number of pairs needed to tell the
  observed change from zero or to bound it within ±``same_band_pct``. When even that is more than
  twice the budget, the comparison stops at once as "unknown", and the note says how many boots
  per side it would need.
* **Order.** The default is A B B A A B … (``order="abba"``): a linear drift across the session
  cancels within every two pairs (A B A B … puts B after A in every pair, so a drift of 1 %
  over 24 boots shows up as a +0.04 % change).

  The reported ``p_value`` is adjusted (``p·α/α′``, capped at 1) so that ``p ≤ alpha`` reads the
  same as for a single test, and the reported CI is a *repeated confidence interval* at the
  level with the same correction (simultaneous coverage over all looks), so stopping on "same"
  is equally honest. Both show in the ``test``/``confidence`` fields of the decision.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from scipy import special as _sp
from scipy import stats as _st

from vpatch.validation.stats import (
    DEFAULT_SAME_BAND_PCT,
    Comparison,
    _as_array,
    compare_boots,
    verdict_for,
)

__all__ = ["AdaptiveComparison", "pocock_nominal_alpha", "Side"]

Side = Literal["a", "b"]
Order = Literal["abab", "abba"]
Correction = Literal["pocock", "bonferroni"]

_JSON_VERSION = 2
#: Share of alpha the tests spend under the normal model (half). The rest is a margin for what the model
#: does not assume (bimodal or heavy-tailed boots, drift) and for the outlier screen, which sets
#: aside the most extreme pair now and then even when nothing is wrong; bench_stress.py measures
#: the A/A rate under each of those with this margin.
_SPEND = 0.5
_POCOCK_SIMS = 200_000
_POCOCK_SEED = 20240611


@lru_cache(maxsize=64)
def _pocock_null_min_p(looks: tuple[int, ...], sims: int, seed: int) -> np.ndarray:
    """Sorted min-over-looks two-sided t p-values of i.i.d. N(0,1) pair differences."""
    rng = np.random.default_rng(seed)
    kmax = max(looks)
    ks = np.asarray(looks)
    out = np.empty(sims)
    chunk = 20_000
    for start in range(0, sims, chunk):
        m = min(chunk, sims - start)
        d = rng.standard_normal((m, kmax))
        s1 = np.cumsum(d, axis=1)[:, ks - 1]
        s2 = np.cumsum(d * d, axis=1)[:, ks - 1]
        mean = s1 / ks
        var = (s2 - ks * mean**2) / (ks - 1)
        t = mean / np.sqrt(var / ks)
        p = 2.0 * _st.t.sf(np.abs(t), ks - 1)
        out[start : start + m] = p.min(axis=1)
    out.sort()
    return out


def pocock_nominal_alpha(
    alpha: float, looks: Sequence[int], *, sims: int = _POCOCK_SIMS, seed: int = _POCOCK_SEED
) -> float:
    """Per-look level α′ with P(some look has p ≤ α′ | H0) = α, for paired t-tests at ``looks``.

    ``looks`` are the numbers of pairs at which the test is run (each ≥ 2). The null sequence of
    t statistics is simulated (``sims`` runs, fixed ``seed``: deterministic) and α′ is the
    α-quantile of the smallest p-value over the looks. With a single look α′ = α exactly.
    The result is never below the Bonferroni level α / len(looks).
    """
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    lk = tuple(sorted(set(int(k) for k in looks)))
    if not lk or lk[0] < 2:
        raise ValueError(f"looks must be pair counts ≥ 2, got {list(looks)!r}")
    if len(lk) == 1:
        return alpha
    null = _pocock_null_min_p(lk, sims, seed)
    return max(float(np.quantile(null, alpha)), alpha / len(lk))


class AdaptiveComparison:
    """Sequential A/B comparison on interleaved boots; see the module docstring.

    Parameters
    ----------
    min_boots, max_boots:
        Boots *per side* before the first look and at most. Looks happen after every complete
        pair from ``min_boots`` to ``max_boots`` (``max_boots − min_boots + 1`` planned looks).
    alpha:
        Overall false-positive rate across all looks (better/worse when H0 holds).
    confidence:
        Overall (simultaneous) confidence of the reported repeated CI.
    same_band_pct, lower_is_better, metric, unit:
        As in :func:`~vpatch.validation.stats.compare_boots`.
    order:
        ``"abab"`` (A B A B …) or ``"abba"`` (A B B A A B …).
    correction:
        ``"pocock"`` or ``"bonferroni"`` (see module docstring).
    """

    def __init__(
        self,
        *,
        min_boots: int = 3,
        max_boots: int = 16,
        alpha: float = 0.01,
        confidence: float = 0.95,
        same_band_pct: float = DEFAULT_SAME_BAND_PCT,
        lower_is_better: bool = True,
        metric: str = "",
        unit: str = "",
        order: Order = "abba",
        correction: Correction = "pocock",
        outlier_alpha: float = 0.002,
        max_outliers: int = 3,
    ) -> None:
        if not isinstance(min_boots, int) or min_boots < 2:
            raise ValueError(f"min_boots must be an integer ≥ 2 (a paired t-test needs 2 pairs), got {min_boots!r}")
        if not isinstance(max_boots, int) or max_boots < min_boots:
            raise ValueError(f"max_boots must be an integer ≥ min_boots ({min_boots}), got {max_boots!r}")
        if not (0.0 < alpha < 1.0):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if not (0.0 < confidence < 1.0):
            raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
        if not (same_band_pct >= 0 and math.isfinite(same_band_pct)):
            raise ValueError(f"same_band_pct must be a finite number ≥ 0, got {same_band_pct!r}")
        if order not in ("abab", "abba"):
            raise ValueError(f"order must be 'abab' or 'abba', got {order!r}")
        if correction not in ("pocock", "bonferroni"):
            raise ValueError(f"correction must be 'pocock' or 'bonferroni', got {correction!r}")
        self.min_boots = min_boots
        self.max_boots = max_boots
        self.alpha = alpha
        self.confidence = confidence
        self.same_band_pct = same_band_pct
        self.lower_is_better = lower_is_better
        self.metric = metric
        self.unit = unit
        self.order: Order = order
        self.correction: Correction = correction
        if not (0.0 <= outlier_alpha < 1.0):
            raise ValueError(f"outlier_alpha must be in [0, 1), got {outlier_alpha!r}")
        if not isinstance(max_outliers, int) or max_outliers < 0:
            raise ValueError(f"max_outliers must be an integer ≥ 0, got {max_outliers!r}")
        self.outlier_alpha = outlier_alpha
        self.max_outliers = max_outliers
        self._outliers: list[int] = []  # indices of complete pairs set aside
        self._boot_medians: list[float] = []

        looks = tuple(range(min_boots, max_boots + 1))
        if correction == "bonferroni":
            self.look_alpha = alpha * _SPEND / len(looks)
            self.look_conf_alpha = (1.0 - confidence) / len(looks)
        else:
            self.look_alpha = pocock_nominal_alpha(alpha * _SPEND, looks)
            self.look_conf_alpha = pocock_nominal_alpha(1.0 - confidence, looks)
        self._boots: list[tuple[Side, list[float]]] = []
        self._history: list[Comparison] = []
        self._result: Comparison | None = None

    # ---------------------------------------------------------------- state

    @property
    def n_a(self) -> int:
        return sum(1 for s, _ in self._boots if s == "a")

    @property
    def n_b(self) -> int:
        return sum(1 for s, _ in self._boots if s == "b")

    @property
    def planned_looks(self) -> int:
        return self.max_boots - self.min_boots + 1

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def boots_used(self) -> int:
        return len(self._boots)

    @property
    def budget_left(self) -> int:
        """Boots (both sides) that may still be run now; 0 once decided."""
        return 0 if self.done else 2 * (self.max_boots + len(self._outliers)) - len(self._boots)

    @property
    def outlier_pairs(self) -> list[int]:
        """Indices (0-based, in time order) of the complete pairs set aside as outliers."""
        return list(self._outliers)

    @property
    def history(self) -> list[Comparison]:
        """Every look so far (adjusted comparisons), oldest first."""
        return list(self._history)

    def boots(self, side: Side) -> list[list[float]]:
        return [list(r) for s, r in self._boots if s == side]

    # ---------------------------------------------------------------- driving

    def next_side(self) -> Side:
        """Which prefix the next boot should measure. Raises once the comparison is decided."""
        if self.done:
            raise ValueError("comparison already decided; see decision()")
        na, nb = self.n_a, self.n_b
        if na != nb:
            return "a" if na < nb else "b"
        if self.order == "abba" and na % 2 == 1:
            return "b"
        return "a"

    def add(self, side: Side, samples: Sequence[float]) -> Comparison | None:
        """Record one boot of ``side`` (its run samples) and look if a pair just completed.

        Returns :meth:`decision` after the boot. Raises ValueError for a decided comparison,
        a boot for the side that is not next (the order keeps pairs adjacent in time), or bad
        samples (empty, NaN, non-positive).
        """
        if side not in ("a", "b"):
            raise ValueError(f"side must be 'a' or 'b', got {side!r}")
        expected = self.next_side()
        if side != expected:
            raise ValueError(
                f"boot for side {side!r} out of order: the interleaved plan ({self.order}) needs "
                f"side {expected!r} next"
            )
        runs = [float(v) for v in _as_array(samples, f"boot {len(self._boots)} ({side})", positive=True)]
        self._boots.append((side, runs))
        self._boot_medians.append(float(np.median(runs)))
        if self.n_a == self.n_b:
            self._pair_done()
        return self._result

    def _medians(self, side: Side) -> list[float]:
        return [m for (s, _), m in zip(self._boots, self._boot_medians, strict=True) if s == side]

    def _pair_logratios(self) -> np.ndarray:
        return np.log(self._medians("b")) - np.log(self._medians("a"))

    def _kept(self) -> list[int]:
        return [i for i in range(self.n_a) if i not in self._outliers]

    def _screen(self) -> bool:
        """Set aside the most extreme pairs if they disagree with the others; True when any were.

        Step-down, so that two outlier boots do not hide each other (in a leave-one-out test the second
        one inflates the spread the first is judged by): for r from the most the screen may still set
        aside down to 1, the r-th most extreme pair is tested against the pairs less extreme than it
        (leave-r-out t, Bonferroni over the pairs); the first r that disagrees sets aside the r most extreme.
        """
        left = self.max_outliers - len(self._outliers)
        if left <= 0 or self.outlier_alpha <= 0:
            return False
        kept = self._kept()
        k = len(kept)
        if k < 4:
            return False
        d = self._pair_logratios()[kept]
        order = np.argsort(-np.abs(d - np.median(d)), kind="stable")
        for r in range(min(left, k - 3), 0, -1):
            core = d[order[r:]]
            n = core.size
            sd = float(core.std(ddof=1))
            if sd <= 0.0:
                continue
            t = abs(d[order[r - 1]] - core.mean()) / (sd * math.sqrt(1.0 + 1.0 / n))
            crit = float(_sp.stdtrit(n - 1, 1.0 - self.outlier_alpha / (2 * k)))
            if t > crit:
                self._outliers.extend(kept[int(i)] for i in order[:r])
                return True
        return False

    def _pair_done(self) -> None:
        if self._screen():
            return  # measure a fresh pair in its place
        if len(self._kept()) >= self.min_boots:
            self._look()

    def decision(self) -> Comparison | None:
        """The final comparison, or None while more boots are needed."""
        return self._result

    def _needed_pairs(self, d: np.ndarray) -> float:
        """Pairs needed to tell the observed change from 0 or bound it within the band, from an
        optimistic estimate of the pair noise: the spread without the most extreme pair (it may be
        outliers the screen will set aside), at its 80 % lower confidence bound. Infinite patience
        (0) below 6 pairs: two outlier pairs among 4 or 5 look like noise, not like outliers."""
        if d.size < 6:
            return 0.0
        m = abs(float(d.mean()))
        # as many of the most extreme pairs as the screen may still set aside (at least one, and
        # never below 3 pairs left): they may be outlier boots that have not been caught yet
        drop = max(1, min(self.max_outliers - len(self._outliers), d.size - 4))
        d = np.delete(d, np.argsort(-np.abs(d - np.median(d)))[:drop])
        k = d.size
        sd = float(d.std(ddof=1)) * math.sqrt((k - 1) / float(_st.chi2.ppf(0.8, k - 1)))
        if sd <= 0:
            return 0.0
        z_p = float(_st.norm.ppf(1.0 - self.look_alpha / 2.0))
        z_c = float(_st.norm.ppf(1.0 - self.look_conf_alpha / 2.0))
        band = math.log1p(self.same_band_pct / 100.0)
        n_diff = (z_p * sd / m) ** 2 if m > 0 else math.inf
        n_same = (z_c * sd / (band - m)) ** 2 if band > m else math.inf
        return min(n_diff, n_same)

    def _look(self) -> None:
        kept = self._kept()
        k = len(kept)
        # each boot enters as its median (what compare_boots reduces it to anyway)
        ma, mb = self._medians("a"), self._medians("b")
        raw = compare_boots(
            [[ma[i]] for i in kept],
            [[mb[i]] for i in kept],
            lower_is_better=self.lower_is_better,
            alpha=self.alpha,
            same_band_pct=self.same_band_pct,
            metric=self.metric,
            unit=self.unit,
            confidence=1.0 - self.look_conf_alpha,
            paired=True,
        )
        # every pair set aside costs a share of the level (a Bonferroni step): the screen picks the pair
        # furthest from the rest, so without this it would also trim honest noise into significance
        p_adj = min(1.0, raw.p_value * (1 + len(self._outliers)) * self.alpha / self.look_alpha)
        verdict = verdict_for(
            p_adj,
            raw.change_pct,
            raw.ci_low_pct,
            raw.ci_high_pct,
            alpha=self.alpha,
            same_band_pct=self.same_band_pct,
            lower_is_better=self.lower_is_better,
        )
        adj = replace(
            raw,
            p_value=p_adj,
            verdict=verdict,
            test=(
                f"{raw.test}, {self.correction} over {self.planned_looks} looks "
                f"(look {k - self.min_boots + 1}, per-look alpha {self.look_alpha:.2g})"
            ),
        )
        notes = []
        if self._outliers:
            notes.append(f"{len(self._outliers)} outlier pair{'s' if len(self._outliers) > 1 else ''} "
                         f"set aside and re-measured")
        if verdict == "unknown" and (raw.ci_low_pct > 0.0 or raw.ci_high_pct < 0.0):
            # the interval (for "same", at 1 - confidence over all looks) is not the test's level (alpha over
            # all looks): say why an interval that excludes 0 is still no verdict
            notes.append(f"the interval excludes 0 but p {p_adj:.2g} > alpha {self.alpha:g}: the interval covers "
                         f"{100 * self.confidence:g} % over all looks, a verdict needs {100 * (1 - self.alpha):g} %")
        stop = verdict != "unknown" or k >= self.max_boots
        if not stop:
            need = self._needed_pairs(self._pair_logratios()[kept])
            if need > 2 * self.max_boots:
                d = self._pair_logratios()[kept]
                notes.append(
                    f"noise {100 * float(d.std(ddof=1)):.2g} % per pair: deciding needs about "
                    f"{min(need, 1e6):.0f} boots per side, the budget is {self.max_boots}; stopped early"
                )
                stop = True
        adj = replace(adj, note="; ".join(notes))
        self._history.append(adj)
        if stop:
            self._result = adj

    # ---------------------------------------------------------------- persistence

    def config(self) -> dict[str, Any]:
        return {
            "min_boots": self.min_boots,
            "max_boots": self.max_boots,
            "alpha": self.alpha,
            "confidence": self.confidence,
            "same_band_pct": self.same_band_pct,
            "lower_is_better": self.lower_is_better,
            "metric": self.metric,
            "unit": self.unit,
            "order": self.order,
            "correction": self.correction,
            "outlier_alpha": self.outlier_alpha,
            "max_outliers": self.max_outliers,
        }

    def to_json(self) -> str:
        """Serialize the configuration and every boot in order (the decision is derived)."""
        return json.dumps(
            {
                "version": _JSON_VERSION,
                "config": self.config(),
                "boots": [{"side": s, "samples": r} for s, r in self._boots],
                "look_alpha": self.look_alpha,
                "decision": None if self._result is None else self._result.as_dict(),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> AdaptiveComparison:
        """Rebuild a sampler from :meth:`to_json` output by replaying its boots."""
        d = json.loads(data) if isinstance(data, str) else data
        if not isinstance(d, dict) or d.get("version") not in (1, _JSON_VERSION):
            raise ValueError(f"not an AdaptiveComparison state of version 1 or {_JSON_VERSION}")
        try:
            s = cls(**d["config"])
            for bt in d["boots"]:
                s.add(bt["side"], bt["samples"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"corrupt AdaptiveComparison state: {exc!r}") from None
        return s

    def __repr__(self) -> str:
        state = self._result.verdict if self._result else "sampling"
        return f"AdaptiveComparison({self.metric or 'metric'}: {self.n_a}+{self.n_b} boots, {state})"
