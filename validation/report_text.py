"""Small text helpers shared by the report renderers (Markdown, HTML, JUnit)."""
from __future__ import annotations

import datetime as _dt
from typing import Any
from collections.abc import Mapping

from . import stats

VERDICT_MARK = {"better": "🟢", "worse": "🔴", "same": "⚪", "unknown": "❔"}
CLAIM_MARK = {"met": "✅", "not-met": "⚠️", "contradicted": "❌", "unknown": "❔", "not-measured": "➖"}
DRIFT_MARK = {"clean": "✅", "3-way": "🟡", "already-upstream": "⤴️", "conflict": "❌", "obsolete": "❌",
              "applies-but-no-effect": "⚠️", "error": "❌", "unknown": "➖", "resolved": "🟡"}
OUTCOME_MARK = {"passed": "✅", "failed": "❌", "needs-human": "🛑", "unknown": "❔", "not-checked": "➖",
                "not-measured": "➖", "upstream": "⤴️"}
OUTCOME_ORDER = ("passed", "failed", "needs-human", "not-checked", "not-measured", "upstream", "unknown")


def comparison_text(cmp: Mapping[str, Any] | None, *, with_metric: bool = False) -> str:
    """``14.63 → 14.21 ms (−2.9 %, 95 % CI −3.1…−2.7 %, p 0.0004, n 12+12): better`` from a stored dict."""
    if not cmp:
        return ""
    d = dict(cmp)
    if not with_metric:
        d["metric"] = ""
    return stats.Comparison.from_dict(d).describe()


def short_comparison(cmp: Mapping[str, Any] | None) -> str:
    """A compact table cell: ``14.63 → 14.21 ms −2.9 % [−3.1, −2.7] p 0.0004 n 12+12``."""
    if not cmp:
        return ""
    full = comparison_text(cmp)
    head, _, rest = full.partition(" (")
    inner = rest.rsplit("): ", 1)[0]
    parts = [p.strip() for p in inner.split(",")]
    change = parts[0] if parts else ""
    ci = next((p for p in parts if "CI" in p), "")
    ci = ci.split("CI", 1)[1].strip().rstrip("%").strip().replace("…", ", ") if ci else ""
    p = next((x for x in parts if x.startswith("p ")), "")
    n = next((x for x in parts if x.startswith("n ")), "")
    return f"{head} {change} [{ci}] {p} {n}".replace("  ", " ").strip()


def upstream_text(up: Mapping[str, Any] | None) -> str:
    if not up:
        return "range not given"
    s = f"{up.get('from') or '?'} → {up.get('to') or '?'}"
    if up.get("to_commit"):
        s += f" ({str(up['to_commit'])[:10]})"
    if up.get("commits") is not None:
        s += f", {up['commits']} upstream commits"
    return s


def when(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def counts_text(d: Mapping[str, int], order: tuple[str, ...] = ()) -> str:
    keys = [k for k in order if k in d] + sorted(k for k in d if k not in order)
    return ", ".join(f"{d[k]} {k}" for k in keys) or "none"
