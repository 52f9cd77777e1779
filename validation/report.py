"""The report model: what ``vpatch report`` (and the nightly) tells people, as plain data.

:func:`build_report` reads the series, the results store and (optionally) a drift/check result and
returns a :class:`Report` — a tree of dicts and lists that the renderers (:mod:`.report_md`,
:mod:`.report_html`, :mod:`.report_junit`) turn into Markdown, HTML and JUnit XML and that
``--json`` prints as it is.  Everything numeric comes from :mod:`.stats`; nothing here runs a
benchmark, touches git or the network.

Per entry, in the shape the fork's commit messages were written in::

    3. moe-int4-wvsplitk   drift: clean
       TPOT 14.63 → 14.21 ms (−2.9 %, 95 % CI −3.1…−2.7 %, p 0.0004, n 12+12): better
       claim TPOT −2.0 %: met (measured −2.90 % (CI −3.10…−2.70 %) is consistent with claimed −2.00 %)

How prefixes are found in the store
-----------------------------------
Results are keyed by tree hash; rows also carry the entry id (the prefix's last entry, ``NULL`` for
the bare base) and the base they were measured on.  For the reported base (default: the base of the
newest sample) each entry's prefix is the newest tree recorded under its id, unless the caller
passes the tree hashes explicitly (``trees=``, e.g. from ``vpatch nightly``), which is exact.

Which samples stand for a prefix
--------------------------------
One run configuration per metric (the config hash of the newest sample of that metric on this base;
two prefixes are only compared on the same configuration).  Gates: a prefix is represented by its
``on`` samples when there are any (the stack as shipped), else ``none``, else ``off``.  A gated
entry whose own tree was measured both with the gate off and on is judged off → on on that one tree
(the cleanest A/B: same build, same boot pattern); otherwise by previous prefix → this prefix.

Comparisons use :func:`~.stats.compare_boots` (the boot is the replication unit) for latency
metrics and :func:`~.stats.compare` on the pooled iterations for ``kernel:*`` micro-benchmarks
(each iteration is an independent timing).  Accuracy uses the paired exact McNemar test per
question against the previous prefix with accuracy data.

Change points in the nightly history: see :func:`change_points`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from . import stats
from .store import ANY, Store

UNKNOWN_DRIFT = "unknown"
NEEDS_HUMAN = ("conflict", "obsolete", "applies-but-no-effect", "error")
DRIFT_OK = ("clean", "3-way", "already-upstream")
LATENCY_METRICS = ("tpot", "ttft")
HIGHER_IS_BETTER = ("throughput", "gsm8k")
ACCURACY_FILTERS = ("flexible-extract", "strict-match")
_LABELS = {"tpot": "TPOT", "ttft": "TTFT", "itl": "ITL", "throughput": "Throughput", "gsm8k": "gsm8k"}


def metric_label(metric: str) -> str:
    if metric.startswith("kernel:"):
        return metric.split(":", 1)[1]
    return _LABELS.get(metric, metric)


def lower_is_better(metric: str) -> bool:
    return metric.split(":", 1)[0] not in HIGHER_IS_BETTER


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything a report shows; ``as_dict()`` is the ``--json`` document."""

    series: str
    base: str | None
    generated_at: float
    store: str | None
    upstream: dict[str, Any] | None          # {"from", "to", "from_commit", "to_commit", "commits"}
    entries: list[dict[str, Any]]
    prefixes: list[dict[str, Any]]           # per prefix: index, label, tree, per-metric summaries
    accuracy: list[dict[str, Any]]           # per filter: points per prefix with the paired test
    history: list[dict[str, Any]]            # per metric: nightly points and change points
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return _json_safe({
            "series": self.series, "base": self.base, "generated_at": self.generated_at,
            "store": self.store, "upstream": self.upstream, "entries": self.entries,
            "prefixes": self.prefixes, "accuracy": self.accuracy, "history": self.history,
            "summary": self.summary, "notes": self.notes,
        })


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


# ----------------------------------------------------------------------------------------------
# reading the store (queries the store module does not have; read-only, on its connection)
# ----------------------------------------------------------------------------------------------


def newest_base(store: Store) -> str | None:
    """The base of the newest sample (top-of-stack samples first), or of the newest accuracy item."""
    for sql in ("SELECT base FROM samples WHERE top=1 ORDER BY created_at DESC LIMIT 1",
                "SELECT base FROM samples ORDER BY created_at DESC LIMIT 1",
                "SELECT base FROM accuracy_items ORDER BY created_at DESC LIMIT 1"):
        row = store.conn.execute(sql).fetchone()
        if row:
            return row[0]
    return None


def prefix_trees(store: Store, base: str) -> dict[str | None, str]:
    """``{entry_id or None (the bare base): newest tree measured under it on base}``."""
    out: dict[str | None, tuple[float, str]] = {}
    for table in ("samples", "accuracy_items"):
        rows = store.conn.execute(
            f"SELECT entry_id, tree, MAX(created_at) AS t FROM {table} WHERE base=? GROUP BY entry_id, tree", (base,)
        ).fetchall()
        for r in rows:
            key = r["entry_id"]
            if key not in out or r["t"] > out[key][0]:
                out[key] = (r["t"], r["tree"])
    return {k: v[1] for k, v in out.items()}


def _config_for(store: Store, base: str, metric: str) -> str | None:
    row = store.conn.execute(
        "SELECT config_hash FROM samples WHERE base=? AND metric=? ORDER BY created_at DESC LIMIT 1", (base, metric)
    ).fetchone()
    return row[0] if row else None


def _accuracy_config(store: Store, base: str) -> tuple[str | None, list[str]]:
    row = store.conn.execute(
        "SELECT config_hash FROM accuracy_items WHERE base=? ORDER BY created_at DESC LIMIT 1", (base,)
    ).fetchone()
    if not row:
        return None, []
    filters = [r[0] for r in store.conn.execute(
        "SELECT DISTINCT filter FROM accuracy_items WHERE base=? AND config_hash=?", (base, row[0]))]
    ordered = [f for f in ACCURACY_FILTERS if f in filters] + sorted(f for f in filters if f not in ACCURACY_FILTERS)
    return row[0], ordered


def _metrics_of(store: Store, base: str) -> list[str]:
    return [r[0] for r in store.conn.execute("SELECT DISTINCT metric FROM samples WHERE base=?", (base,))]


def _unit_of(store: Store, metric: str) -> str:
    row = store.conn.execute("SELECT unit FROM samples WHERE metric=? LIMIT 1", (metric,)).fetchone()
    return row[0] if row else ""


def _gates_of(store: Store, tree: str, metric: str, config: str) -> set[str]:
    return {r[0] for r in store.conn.execute(
        "SELECT DISTINCT gate FROM samples WHERE tree=? AND metric=? AND config_hash=?", (tree, metric, config))}


def _primary_boots(store: Store, tree: str | None, metric: str, config: str | None) -> tuple[list[list[float]], str | None]:
    """The boots that stand for a prefix (gate ``on`` > ``none`` > ``off``) and the gate used."""
    if tree is None or config is None:
        return [], None
    gates = _gates_of(store, tree, metric, config)
    for g in ("on", "none", "off"):
        if g in gates:
            return store.samples(tree, metric, config, g), g
    return [], None


# ----------------------------------------------------------------------------------------------
# comparisons
# ----------------------------------------------------------------------------------------------


def _compare(metric: str, unit: str, a: list[list[float]], b: list[list[float]], *, alpha: float) -> stats.Comparison:
    label = metric_label(metric)
    if metric.startswith("kernel:"):
        fa = [v for boot in a for v in boot]
        fb = [v for boot in b for v in boot]
        return stats.compare(fa, fb, lower_is_better=lower_is_better(metric), alpha=alpha, metric=label, unit=unit)
    return stats.compare_boots(a, b, lower_is_better=lower_is_better(metric), alpha=alpha, metric=label, unit=unit)


def _summary(metric: str, boots: list[list[float]]) -> dict[str, Any] | None:
    if not boots:
        return None
    values = [v for b in boots for v in b] if metric.startswith("kernel:") else list(stats.boot_medians(boots))
    s = stats.summarize(values)
    return {"median": s.median, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n,
            "unit_of_n": "samples" if metric.startswith("kernel:") else "boots"}


def _paired_as_comparison(p: stats.Paired) -> stats.Comparison:
    """A McNemar result in :class:`~.stats.Comparison` form, so :func:`~.stats.check_claim` can judge it."""
    return stats.Comparison(
        metric=p.metric, unit="%", n_a=p.n, n_b=p.n, median_a=p.acc_a_pct, median_b=p.acc_b_pct,
        change_pct=p.change_pts, ci_low_pct=p.ci_low_pts, ci_high_pct=p.ci_high_pts, p_value=p.p_value,
        test=p.test, verdict=p.verdict, lower_is_better=False, alpha=p.alpha, confidence=p.confidence,
        same_band_pct=p.same_band_pts, paired=True,
    )


def _claim_text(claim: Any) -> str:
    label = metric_label(claim.metric)
    exp = claim.expected_pct
    if claim.direction == "same":
        return f"{label} unchanged"
    if exp is not None:
        txt = f"{label} {stats._signed(exp, 1)} %"
        if claim.before is not None and claim.after is not None:
            u = f" {claim.unit}" if claim.unit else ""
            txt = f"{label} {claim.before:g} → {claim.after:g}{u} ({stats._signed(exp, 1)} %)"
        return txt
    return f"{label} {claim.direction}"


def _judge_claim(claim: Any, cmp: stats.Comparison | None) -> dict[str, Any]:
    base = {"metric": claim.metric, "direction": claim.direction, "expected_pct": claim.expected_pct,
            "text": _claim_text(claim), "note": claim.note}
    if cmp is None:
        return {**base, "status": "not-measured", "reason": f"no {metric_label(claim.metric)} results for this prefix"}
    try:
        cc = stats.check_claim(claim.expected_pct, claim.direction, cmp)
    except ValueError as e:
        return {**base, "status": "unknown", "reason": f"claim cannot be checked: {e}"}
    return {**base, "status": cc.status, "reason": cc.reason}


# ----------------------------------------------------------------------------------------------
# drift input (from `vpatch check --json`, `vpatch drift --json` or `vpatch nightly --json`)
# ----------------------------------------------------------------------------------------------


def _find_entries_doc(doc: Any) -> dict | None:
    """The dict holding ``entries: [{id, status}, ...]`` somewhere in a check/drift/nightly JSON document."""
    if isinstance(doc, dict):
        ents = doc.get("entries")
        if isinstance(ents, list) and ents and all(isinstance(e, dict) and "id" in e and "status" in e for e in ents):
            return doc
        for key in ("check", "drift", "prepare", "rebase", "result"):
            found = _find_entries_doc(doc.get(key))
            if found is not None:
                return found
        for v in doc.values():
            if isinstance(v, dict):
                found = _find_entries_doc(v)
                if found is not None:
                    return found
    return None


def parse_drift(doc: Mapping | None) -> tuple[dict[str, dict], dict[str, Any] | None]:
    """``({entry id: {"status", "detail", "checks"}}, upstream range)`` from a check/drift/nightly JSON."""
    if not doc:
        return {}, None
    found = _find_entries_doc(doc) or {}
    per: dict[str, dict] = {}
    for e in found.get("entries", []):
        status = e.get("status") or UNKNOWN_DRIFT
        if isinstance(status, dict):  # drift scans: {"status": ..., "first_bad": ...}
            status = status.get("status", UNKNOWN_DRIFT)
        per[e["id"]] = {"status": status, "detail": e.get("detail") or e.get("how") or "",
                        "checks": e.get("checks"), "commit": e.get("commit") or e.get("first_bad")}
    frm = found.get("base") or found.get("from") or doc.get("base") or doc.get("from")
    to = found.get("onto") or found.get("to") or doc.get("upstream") or doc.get("onto") or doc.get("to")
    if isinstance(to, dict):
        to = to.get("ref") or to.get("onto")
    upstream = None
    if frm or to:
        upstream = {
            "from": frm, "to": to,
            "from_commit": found.get("base_commit") or found.get("from_commit"),
            "to_commit": found.get("onto_commit") or found.get("to_commit"),
            "commits": found.get("commits") if isinstance(found.get("commits"), int) else
            (len(found["commits"]) if isinstance(found.get("commits"), list) else None),
        }
    return per, upstream


def _check_results(entry: Any, drift: dict | None) -> list[dict[str, Any]]:
    """One row per declared check: passed / failed / not-run (with what the drift result said)."""
    got = (drift or {}).get("checks") or []
    rows = []
    for i, cmd in enumerate(entry.checks):
        r = got[i] if i < len(got) and isinstance(got[i], dict) else None
        if r is None:
            rows.append({"name": cmd, "status": "not-run", "detail": "no check result in this report's input"})
            continue
        ok = r.get("ok", r.get("passed"))
        st = r.get("status")
        if ok is None and isinstance(st, str):
            ok = {"passed": True, "ok": True, "pass": True, "failed": False, "fail": False}.get(st)
        if ok is None and isinstance(r.get("returncode", r.get("rc")), int):
            ok = r.get("returncode", r.get("rc")) == 0
        status = "not-run" if ok is None else ("passed" if ok else "failed")
        rows.append({"name": r.get("name") or r.get("command") or cmd, "status": status,
                     "detail": str(r.get("detail") or r.get("output") or r.get("stderr") or "")[-2000:]})
    return rows


# ----------------------------------------------------------------------------------------------
# change points in the nightly history
# ----------------------------------------------------------------------------------------------


def change_points(
    points: Sequence[Sequence[float]],
    *,
    window: int = 3,
    alpha: float = 0.01,
    min_change_pct: float = stats.DEFAULT_SAME_BAND_PCT,
    lower_is_better: bool = True,
    unit: str = "",
) -> list[dict[str, Any]]:
    """Change points in a history of nightly results (each point: its boot medians), oldest first.

    Method (simple and conservative; the boot is the replication unit):

    1. at every candidate index ``i`` compare the boot medians of the up to ``window`` nightlies
       before it (since the last change point) with those of the up to ``window`` nightlies from
       ``i`` on, with :func:`~.stats.compare` (min of Mann-Whitney U and Kolmogorov-Smirnov);
    2. a candidate counts when ``p ≤ alpha`` and ``|change| > min_change_pct`` (the "same" band);
    3. among consecutive candidates the one with the largest change between the two windows is the
       change point (a window that straddles the shift mixes both levels, so its contrast is smaller;
       the smallest p is not used because it favours the split with more samples, not the right
       one); the scan restarts after it, so each level shift is marked once.

    At the end of the history the "after" window is shorter, so last night's shift is found as soon
    as it alone is significant against the window before (e.g. 3 boots against 9). Returns one dict
    per change point: ``index`` (first nightly at the new level), ``comparison`` (as_dict),
    ``describe`` and ``direction`` ("better"/"worse").
    """
    n = len(points)
    out: list[dict[str, Any]] = []
    start = 0
    i = 1
    while i < n:
        best: tuple[int, stats.Comparison] | None = None
        j = i
        while j < n:
            before = [v for p in points[max(start, j - window):j] for v in p]
            after = [v for p in points[j:j + window] for v in p]
            hit = None
            if before and after and len(before) + len(after) >= 3:
                c = stats.compare(before, after, alpha=alpha, lower_is_better=lower_is_better, unit=unit)
                if c.significant and abs(c.change_pct) > min_change_pct:
                    hit = c
            if hit is None:
                if best is not None:
                    break
                j += 1
                continue
            if best is None or (-abs(hit.change_pct), hit.p_value) < (-abs(best[1].change_pct), best[1].p_value):
                best = (j, hit)
            j += 1
        if best is None:
            break
        k, c = best
        out.append({"index": k, "comparison": c.as_dict(), "describe": c.describe(), "direction": c.verdict})
        start = k
        i = k + 1
    return out


def _history(store: Store, metric: str, config: str | None, *, window: int, alpha: float) -> dict[str, Any] | None:
    if config is None:
        return None
    pts = store.nightly_history(metric, config, gate=ANY)
    if not pts:
        return None
    cps = change_points([p.boot_medians for p in pts], window=window, alpha=alpha,
                        lower_is_better=lower_is_better(metric), unit=_unit_of(store, metric))
    for cp in cps:
        cp["day"] = pts[cp["index"]].day
        cp["base"] = pts[cp["index"]].base
        cp["previous_base"] = pts[cp["index"] - 1].base if cp["index"] > 0 else None
    return {
        "metric": metric, "label": metric_label(metric), "unit": _unit_of(store, metric),
        "points": [{"day": p.day, "base": p.base, "tree": p.tree, "entry": p.entry_id, "boots": p.boots,
                    "median": p.median, "boot_medians": list(p.boot_medians),
                    "low": min(p.boot_medians), "high": max(p.boot_medians)} for p in pts],
        "change_points": cps,
        "method": f"windows of {window} nightlies compared with min(MWU, KS) on boot medians, "
                  f"p ≤ {alpha:g} and |change| > {stats.DEFAULT_SAME_BAND_PCT:g} %",
    }


# ----------------------------------------------------------------------------------------------
# building the report
# ----------------------------------------------------------------------------------------------


def _entry_outcome(e: dict[str, Any]) -> tuple[str, str]:
    """(``failed`` | ``needs-human`` | ``passed`` | ``not-checked`` | ``not-measured`` | ``upstream`` |
    ``unknown``, why) for one entry row.

    ``passed`` needs evidence: every declared effect check ran and passed, every claim was measured and decided
    (met or not met), and something was measured at all. An entry whose checks did not run is ``not-checked``;
    one whose claims (or, without claims, whose prefix) have no results is ``not-measured``; one upstream
    already holds (dropped from the stack) is ``upstream``."""
    drift = (e.get("drift") or {}).get("status")
    contradicted = [c for c in e["claims"] if c["status"] == "contradicted"]
    worse_acc = [a for a in e["accuracy"] if (a.get("paired") or {}).get("verdict") == "worse"]
    failed_checks = [c for c in e["checks"] if c["status"] == "failed"]
    if drift in NEEDS_HUMAN:
        return "needs-human", f"drift: {drift}" + (f" ({e['drift'].get('detail')})" if e["drift"].get("detail") else "")
    if contradicted or worse_acc or failed_checks:
        why = [f"claim {c['text']} contradicted: {c['reason']}" for c in contradicted]
        why += [f"{a['filter']} accuracy worse: {a['describe']}" for a in worse_acc]
        why += [f"check failed: {c['name']}" for c in failed_checks]
        return "failed", "; ".join(why)
    measured = any(m.get("comparison") for m in e["metrics"])
    if drift == "already-upstream" and not measured and not any(c["status"] in ("met", "not-met") for c in e["claims"]):
        return "upstream", "already upstream: dropped from the stack, nothing of its own to measure"
    not_run = [c for c in e["checks"] if c["status"] != "passed"]
    if not_run:
        return "not-checked", f"effect not checked: {len(not_run)} of {len(e['checks'])} check(s) did not run"
    unmeasured = [c for c in e["claims"] if c["status"] == "not-measured"]
    if unmeasured or (not e["claims"] and not measured):
        return "not-measured", ("claims not measured: " + ", ".join(c["text"] for c in unmeasured)) if unmeasured \
            else "nothing measured for this entry"
    undecided = [c for c in e["claims"] if c["status"] not in ("met", "not-met")]
    if undecided:
        return "unknown", "nothing decided: " + ", ".join(f"{c['text']}: {c['status']}" for c in undecided)
    not_met = [c for c in e["claims"] if c["status"] == "not-met"]
    if not_met:
        return "passed", "; ".join(f"claim {c['text']} not met: {c['reason']}" for c in not_met)
    return "passed", "claims met" if e["claims"] else "measured"


def build_report(
    series: Any,
    store: Store | None,
    *,
    drift: Mapping | None = None,
    base: str | None = None,
    trees: Mapping[str | None, str] | None = None,
    metrics: Sequence[str] = LATENCY_METRICS,
    alpha: float = 0.01,
    history_window: int = 3,
    now: float | None = None,
) -> Report:
    """Build the report for ``series`` from ``store`` (may be None: drift only) and a drift result.

    ``trees`` maps entry id (``None`` for the bare base) to the prefix's tree hash when the caller
    knows them; otherwise they are looked up in the store (see the module docstring).
    """
    drift_by_id, upstream = parse_drift(drift)
    notes: list[str] = []
    if store is not None and base is None:
        base = newest_base(store)
    if base is None:
        base = getattr(series, "base", None)
    if upstream is None and base and base != getattr(series, "base", None):
        upstream = {"from": series.base, "to": base, "from_commit": None, "to_commit": None, "commits": None}
    found = prefix_trees(store, base) if store is not None and base else {}
    if trees:
        found = {**found, **dict(trees)}

    # which metrics: the requested latency metrics, every claimed metric, every metric on this base
    wanted: list[str] = list(metrics)
    for e in series.entries:
        for c in e.claims:
            if c.metric != "gsm8k" and c.metric not in wanted:
                wanted.append(c.metric)
    if store is not None and base:
        for m in _metrics_of(store, base):
            if m not in wanted:
                wanted.append(m)
    configs = {m: (_config_for(store, base, m) if store is not None and base else None) for m in wanted}
    units = {m: (_unit_of(store, m) if store is not None else "") for m in wanted}

    # --- prefixes: base, then each entry -------------------------------------------------------
    chain: list[tuple[int, str | None, str, str | None]] = [(0, None, f"base {base}" if base else "base", found.get(None))]
    for i, e in enumerate(series.entries, 1):
        chain.append((i, e.id, e.id, found.get(e.id)))
    prim: dict[tuple[int, str], tuple[list[list[float]], str | None]] = {}
    prefixes: list[dict[str, Any]] = []
    for idx, eid, label, tree in chain:
        row: dict[str, Any] = {"index": idx, "entry": eid, "label": label, "tree": tree, "metrics": {}}
        for m in wanted:
            boots, gate = _primary_boots(store, tree, m, configs[m]) if store is not None else ([], None)
            prim[(idx, m)] = (boots, gate)
            s = _summary(m, boots)
            if s:
                s["gate"] = gate
                row["metrics"][m] = s
        prefixes.append(row)

    # --- accuracy per prefix (paired vs the previous prefix with data) --------------------------
    accuracy: list[dict[str, Any]] = []
    acc_by_entry: dict[str | None, list[dict]] = {}
    if store is not None and base:
        acc_cfg, filters = _accuracy_config(store, base)
        for flt in filters:
            assert acc_cfg is not None  # filters come from that config's rows
            pts: list[dict[str, Any]] = []
            prev: tuple[str, dict[int, bool]] | None = None
            for idx, eid, label, tree in chain:
                items = store.accuracy_items(tree, acc_cfg, flt, gate=ANY) if tree else {}
                if not items:
                    continue
                n = len(items)
                acc = sum(items.values()) / n
                pt: dict[str, Any] = {"index": idx, "entry": eid, "label": label, "filter": flt, "n": n, "acc_pct": 100 * acc,
                      "stderr_pct": 100 * math.sqrt(acc * (1 - acc) / n) if n > 1 else 0.0, "paired": None,
                      "describe": f"gsm8k {flt} {100 * acc:.1f} % (n {n})"}
                if prev is not None:
                    common = sorted(set(prev[1]) & set(items))
                    if common:
                        pr = stats.mcnemar_exact([prev[1][q] for q in common], [items[q] for q in common],
                                                 alpha=alpha, metric=f"gsm8k {flt}")
                        pt["paired"] = {**pr.as_dict(), "against": prev[0]}
                        pt["describe"] = pr.describe()
                        pt["_cmp"] = _paired_as_comparison(pr)
                pts.append(pt)
                acc_by_entry.setdefault(eid, []).append(pt)
                prev = (label, items)
            accuracy.append({"filter": flt, "points": pts})

    # --- entries --------------------------------------------------------------------------------
    entries = []
    for idx, _eid, _label, tree in chain[1:]:
        e = series.entries[idx - 1]
        d = drift_by_id.get(e.id)
        metric_rows = []
        cmps: dict[str, stats.Comparison] = {}
        claimed = {c.metric for c in e.claims}
        for m in wanted:
            after, g_after = prim[(idx, m)]
            cfg = configs[m]
            own = _gates_of(store, tree, m, cfg) if (store is not None and tree and cfg) else set()
            if e.gate and {"on", "off"} <= own:
                assert store is not None and tree and cfg  # `own` is empty otherwise
                before = store.samples(tree, m, cfg, "off")
                after = store.samples(tree, m, cfg, "on")
                against = f"{e.id} gate off"
            else:
                # the previous prefix with results for this metric
                before, against = [], None
                for j in range(idx - 1, -1, -1):
                    if prim[(j, m)][0]:
                        before, against = prim[(j, m)][0], chain[j][2]
                        break
            if not after and m not in claimed and m not in metrics:
                continue
            row = {"metric": m, "label": metric_label(m), "unit": units[m], "against": against,
                                   "comparison": None, "describe": f"{metric_label(m)}: not measured"}
            if after and before:
                try:
                    c = _compare(m, units[m], before, after, alpha=alpha)
                except ValueError as ex:
                    row["describe"] = f"{metric_label(m)}: cannot compare ({ex})"
                else:
                    cmps[m] = c
                    row["comparison"] = c.as_dict()
                    row["describe"] = c.describe()
            elif after:
                row["describe"] = f"{metric_label(m)}: measured, nothing to compare against"
            metric_rows.append(row)
        acc_rows = [{k: v for k, v in a.items() if k != "_cmp"} for a in acc_by_entry.get(e.id, [])]
        claims = []
        for c in e.claims:
            if c.metric == "gsm8k":
                pts = [a for a in acc_by_entry.get(e.id, []) if a.get("_cmp") is not None]
                claims.append(_judge_claim(c, pts[0]["_cmp"] if pts else None))
            else:
                claims.append(_judge_claim(c, cmps.get(c.metric)))
        row = {
            "index": idx, "id": e.id, "title": e.title, "area": e.area, "kind": e.kind,
            "upstream": e.upstream.state + (f" {e.upstream.version}" if e.upstream.version else "")
            + (f" {e.upstream.url}" if e.upstream.url else ""),
            "gate": dict(e.gate), "tree": tree,
            "drift": ({"status": d["status"], "detail": d["detail"], "commit": d.get("commit")} if d else None),
            "metrics": metric_rows, "accuracy": acc_rows, "claims": claims,
            "checks": _check_results(e, d),
        }
        row["outcome"], row["outcome_reason"] = _entry_outcome(row)
        entries.append(row)
    for a in accuracy:
        for p in a["points"]:
            p.pop("_cmp", None)

    # --- nightly history ------------------------------------------------------------------------
    history = []
    if store is not None:
        for m in wanted:
            if m.startswith("kernel:"):
                continue
            h = _history(store, m, configs.get(m) or _newest_config(store, m), window=history_window, alpha=alpha)
            if h:
                history.append(h)

    if store is None:
        notes.append("no results store: only drift is reported")
    elif not any(p["metrics"] for p in prefixes):
        notes.append(f"no latency results on base {base} in the store")
    if accuracy:
        notes.append("Accuracy is compared per question against the previous prefix (exact McNemar on the "
                     "discordant answers): every prefix answers the same questions, so this is far more "
                     "sensitive than comparing two means with their ±stderr bars.")
    if store is not None:  # which engines measured: e.g. vLLM 0.28.0+cpu and 0.29.0+cpu across a nightly
        engines = store.conn.execute("SELECT vllm_version, torch_version, base, COUNT(*) FROM samples "
                                     "WHERE vllm_version IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 3, 1").fetchall()
        if engines:
            notes.append("Engines measured: " + "; ".join(f"vLLM {v} (torch {t or '?'}) on {b}: {n} samples"
                                                        for v, t, b, n in engines) + ".")
    notes.append("Latency: the boot (one server start) is the replication unit; n counts boots. "
                 f"Verdicts need p ≤ {alpha:g}; 'same' needs the whole 95 % CI within ±{stats.DEFAULT_SAME_BAND_PCT:g} %; otherwise 'unknown'.")

    summary = _summarize(entries, history)
    return Report(series=getattr(series.header, "name", "series"), base=base,
                  generated_at=time.time() if now is None else now,
                  store=str(store.path) if store is not None else None, upstream=upstream, entries=entries,
                  prefixes=prefixes, accuracy=accuracy, history=history, summary=summary, notes=notes)


def _newest_config(store: Store, metric: str) -> str | None:
    row = store.conn.execute(
        "SELECT config_hash FROM samples WHERE metric=? AND top=1 ORDER BY created_at DESC LIMIT 1", (metric,)
    ).fetchone()
    return row[0] if row else None


def _summarize(entries: Iterable[dict], history: Iterable[dict]) -> dict[str, Any]:
    entries = list(entries)
    claims: dict[str, int] = {}
    for e in entries:
        for c in e["claims"]:
            claims[c["status"]] = claims.get(c["status"], 0) + 1
    drift: dict[str, int] = {}
    for e in entries:
        s = (e.get("drift") or {}).get("status", UNKNOWN_DRIFT)
        drift[s] = drift.get(s, 0) + 1
    outcomes: dict[str, int] = {}
    for e in entries:
        outcomes[e["outcome"]] = outcomes.get(e["outcome"], 0) + 1
    regress = []
    for h in history:
        if h["change_points"] and h["change_points"][-1]["direction"] == "worse":
            cp = h["change_points"][-1]
            regress.append(f"{h['label']} {cp['describe']} from {cp['day']} ({cp['previous_base']} → {cp['base']})")
    if outcomes.get("needs-human"):
        headline = "needs a human"
    elif outcomes.get("failed") or regress:
        headline = "regression"
    elif outcomes.get("passed") and set(outcomes) <= {"passed", "upstream"}:
        headline = "ok"  # every entry in the stack checked and measured
    elif outcomes.get("not-checked") or outcomes.get("not-measured"):
        headline = "not measured"
    else:
        headline = "unknown"
    return {"entries": len(entries), "claims": claims, "drift": drift, "outcomes": outcomes,
            "history_regressions": regress, "headline": headline}
