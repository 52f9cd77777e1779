"""The report as GitHub-flavoured Markdown, sized for ``$GITHUB_STEP_SUMMARY`` (limit 1 MiB per step).

One headline, one compact per-entry table (drift, TPOT, TTFT, claims), accuracy per prefix, change points of
the nightly history, then the full commit-message lines folded in a ``<details>`` block.  When the text
would pass ``max_bytes`` the folded details are dropped first, then table rows (with a note saying so).
"""
from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from .report import metric_label
from .report_text import (CLAIM_MARK, DRIFT_MARK, OUTCOME_MARK, OUTCOME_ORDER, VERDICT_MARK, comparison_text, counts_text,
                          short_comparison, upstream_text, when)

MAX_BYTES = 512 * 1024  # half of GitHub's 1 MiB step-summary limit: room for other steps' summaries


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _metric_cell(e: Mapping[str, Any], metric: str) -> str:
    for m in e["metrics"]:
        if m["metric"] == metric:
            c = m.get("comparison")
            if c:
                return f"{VERDICT_MARK.get(c['verdict'], '')} {c['verdict']}: {short_comparison(c)}"
            return m["describe"].split(": ", 1)[-1]
    return "–"


def _claims_cell(e: Mapping[str, Any]) -> str:
    if not e["claims"]:
        return "–"
    return "<br>".join(f"{CLAIM_MARK.get(c['status'], '')} {c['text']}: {c['status']}" for c in e["claims"])


def render(report: Mapping[str, Any], *, max_bytes: int = MAX_BYTES, title: str | None = None) -> str:
    """Markdown for ``report`` (a :meth:`Report.as_dict` document)."""
    head = _head(report, title)
    rows = _rows(report)
    tail = _tail(report)
    details = _details(report)
    text = "\n".join(head + rows + tail + details) + "\n"
    if len(text.encode()) > max_bytes:
        text = "\n".join(head + rows + tail + ["", "_(details left out to fit the step summary)_"]) + "\n"
    while len(text.encode()) > max_bytes and len(rows) > 3:
        rows = rows[:-1]
        text = "\n".join(head + rows + ["", "_(table cut to fit the step summary; the HTML report has it all)_"]
                         + tail) + "\n"
    return text


def _head(r: Mapping[str, Any], title: str | None) -> list[str]:
    s = r["summary"]
    hl = {"ok": "✅ ok", "regression": "❌ regression", "needs a human": "🛑 needs a human",
          "unknown": "❔ unknown", "not measured": "➖ not measured"}.get(s["headline"], s["headline"])
    lines = [f"## {title or 'vpatch report'}: {r['series']} on {r['base'] or '?'} — {hl}", ""]
    lines.append(f"- **upstream**: {upstream_text(r.get('upstream'))}")
    lines.append(f"- **entries**: {s['entries']} ({counts_text(s['outcomes'], OUTCOME_ORDER)})")
    lines.append(f"- **claims**: {counts_text(s['claims'], ('met', 'not-met', 'contradicted', 'unknown', 'not-measured'))}")
    lines.append(f"- **drift**: {counts_text(s['drift'], ('clean', '3-way', 'already-upstream', 'conflict', 'obsolete'))}")
    for reg in s.get("history_regressions", []):
        lines.append(f"- **nightly change point**: 🔴 {reg}")
    lines.append(f"- generated {when(r['generated_at'])}")
    lines += ["", "| # | entry | drift | TPOT | TTFT | claims | result |", "|---:|---|---|---|---|---|---|"]
    return lines


def _rows(r: Mapping[str, Any]) -> list[str]:
    out = []
    for e in r["entries"]:
        d = (e.get("drift") or {}).get("status", "unknown")
        out.append("| " + " | ".join(_cell(x) for x in (
            str(e["index"]), f"`{e['id']}`", f"{DRIFT_MARK.get(d, '')} {d}", _metric_cell(e, "tpot"),
            _metric_cell(e, "ttft"), _claims_cell(e), f"{OUTCOME_MARK.get(e['outcome'], '')} {e['outcome']}",
        )) + " |")
    return out


def _tail(r: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    if r["accuracy"]:
        flts = [a["filter"] for a in r["accuracy"]]
        lines += ["", "**gsm8k per prefix** (paired McNemar against the previous prefix)", "",
                  "| prefix | " + " | ".join(flts) + " |", "|---|" + "---|" * len(flts)]
        labels: list[str] = []
        for a in r["accuracy"]:
            for p in a["points"]:
                if p["label"] not in labels:
                    labels.append(p["label"])
        for lb in labels:
            cells = []
            for a in r["accuracy"]:
                p = next((p for p in a["points"] if p["label"] == lb), None)
                if p is None:
                    cells.append("–")
                elif p.get("paired"):
                    pr = p["paired"]
                    cells.append(f"{p['acc_pct']:.1f} % ({pr['change_pts']:+.1f} pts, p {pr['p_value']:.2g}, "
                                 f"{VERDICT_MARK.get(pr['verdict'], '')} {pr['verdict']})")
                else:
                    cells.append(f"{p['acc_pct']:.1f} % ± {p['stderr_pct']:.1f} (n {p['n']})")
            lines.append(f"| {_cell(lb)} | " + " | ".join(_cell(c) for c in cells) + " |")
    for h in r["history"]:
        pts = h["points"]
        lines += ["", f"**Nightly {h['label']}** ({len(pts)} nights, {pts[0]['day']} … {pts[-1]['day']}, "
                      f"last {pts[-1]['median']:.4g} {h['unit']} on {pts[-1]['base']}): "
                  + (", ".join(f"{VERDICT_MARK.get(cp['direction'], '')} change point {cp['day']} "
                               f"({cp.get('previous_base')} → {cp.get('base')}): {cp['describe']}"
                               for cp in h["change_points"]) or "no change points")]
    other = []
    for e in r["entries"]:
        for m in e["metrics"]:
            if m["metric"] not in ("tpot", "ttft") and m.get("comparison"):
                other.append(f"- `{e['id']}` {comparison_text(m['comparison'], with_metric=True)}")
    if other:
        lines += ["", "**Other metrics**", ""] + other
    return lines


def _details(r: Mapping[str, Any]) -> list[str]:
    lines = ["", "<details><summary>Per entry, in commit-message form</summary>", ""]
    for e in r["entries"]:
        lines.append(f"**{e['index']}. {e['id']}** — {e['title']} ({e['area']}, upstream {e['upstream']})")
        lines.append("")
        lines.append("```")
        if e.get("drift"):
            lines.append(f"drift: {e['drift']['status']}" + (f" — {e['drift']['detail']}" if e["drift"].get("detail") else ""))
        for m in e["metrics"]:
            lines.append(m["describe"] + (f"   [vs {m['against']}]" if m.get("against") and m.get("comparison") else ""))
        for a in e["accuracy"]:
            lines.append(a["describe"])
        for c in e["claims"]:
            lines.append(f"claim {c['text']}: {c['status']} — {c['reason']}")
        for c in e["checks"]:
            lines.append(f"check {c['status']}: {c['name']}")
        lines.append("```")
        lines.append("")
    lines += [f"- {n}" for n in r.get("notes", [])]
    lines += ["", "</details>"]
    return lines


__all__ = ["render", "MAX_BYTES", "metric_label"]
