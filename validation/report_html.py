"""The report as one self-contained HTML page: inline CSS, inline SVG plots, no scripts, no network.

Top to bottom: a headline bar (series, base, upstream range, overall result), summary cards (entries,
claims, drift, nightly), the plots (TPOT and TTFT waterfalls per prefix, gsm8k per prefix, nightly history
with change points), the per-entry table in commit-message form, and the method notes.
"""
from __future__ import annotations

from html import escape
from typing import Any
from collections.abc import Mapping

from . import plots
from .report_text import OUTCOME_ORDER, comparison_text, counts_text, short_comparison, upstream_text, when

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","DejaVu Sans",sans-serif;color:#1f2937;margin:0;background:#f5f6f8}
header{background:#1f2a44;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px;font-weight:650}
header .sub{color:#c7cfdd;font-size:13px}
main{max-width:1340px;margin:0 auto;padding:18px 28px 40px}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600;white-space:nowrap}
.big{font-size:15px;padding:3px 12px;margin-left:10px;vertical-align:3px}
.ok,.passed,.met,.better,.clean{background:#dcf2e3;color:#17603a}
.regression,.failed,.contradicted,.worse,.conflict,.obsolete,.error{background:#fbe0df;color:#9b1c1a}
.needs-a-human,.needs-human,.applies-but-no-effect{background:#fde8cf;color:#8a4b08}
.not-met,.three-way{background:#fff3c4;color:#6b5300}
.unknown,.not-measured,.not-checked,.upstream,.not-run,.same,.already-upstream{background:#e8ebf0;color:#475063}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:14px;margin:4px 0 18px}
.card{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px rgba(0,0,0,.07)}
.card h3{margin:0 0 6px;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#6b7280}
.card .n{font-size:26px;font-weight:650}
.card .d{font-size:12.5px;color:#4b5563}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.plot-box{background:#fff;border-radius:8px;padding:10px 12px;box-shadow:0 1px 2px rgba(0,0,0,.07)}
.plot-box.wide{grid-column:1 / -1}
svg.plot{width:100%;height:auto;display:block}
.empty{color:#6b7280;font-style:italic;padding:30px 0;text-align:center}
h2{font-size:17px;margin:26px 0 10px}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 2px rgba(0,0,0,.07)}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid #eceef2;vertical-align:top;font-size:13px}
th{background:#f0f2f6;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#4b5563}
td.num{text-align:right;color:#6b7280}
td.m{min-width:250px} td.m .mono{font-size:11.5px} td.e{max-width:290px}
.id{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-weight:600}
.title{color:#4b5563;font-size:12.5px}
.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
details{margin-top:4px} summary{cursor:pointer;color:#3b5bab;font-size:12px}
pre{white-space:pre-wrap;background:#f6f7f9;padding:8px;border-radius:6px;font-size:12px;margin:4px 0}
.notes li{margin:3px 0;color:#4b5563}
"""


def _cls(s: str | None) -> str:
    s = (s or "unknown").replace(" ", "-")
    return "three-way" if s == "3-way" else s


def _badge(text: str | None, cls: str | None = None, title: str | None = None) -> str:
    t = f' title="{escape(title)}"' if title else ""
    return f'<span class="badge {escape(_cls(cls or text))}"{t}>{escape(text or "unknown")}</span>'


def _metric_cell(e: Mapping[str, Any], metric: str) -> str:
    for m in e["metrics"]:
        if m["metric"] == metric:
            c = m.get("comparison")
            if c:
                sc, u = short_comparison(c), (f" {c['unit']} " if c.get("unit") else " ")
                head, sep, rest = sc.partition(u)
                head += sep.rstrip()
                return (f'{_badge(c["verdict"])} <span class="mono">{escape(head)}</span>'
                        f'<div class="mono">{escape(rest)}</div>'
                        f'<div class="title">vs {escape(str(m.get("against")))}</div>')
            return f'<span class="title">{escape(m["describe"].split(": ", 1)[-1])}</span>'
    return '<span class="title">–</span>'


def _entry_row(e: Mapping[str, Any]) -> str:
    d = e.get("drift") or {}
    drift = _badge(d.get("status", "unknown"), title=d.get("detail") or None)
    if d.get("detail"):
        drift += f'<div class="title">{escape(str(d["detail"]))[:200]}</div>'
    claims = "<br>".join(f'{_badge(c["status"], title=c["reason"])} {escape(c["text"])}' for c in e["claims"]) or "–"
    full = [m["describe"] + (f"   [vs {m['against']}]" if m.get("comparison") else "") for m in e["metrics"]]
    full += [a["describe"] for a in e["accuracy"]]
    full += [f"claim {c['text']}: {c['status']} — {c['reason']}" for c in e["claims"]]
    full += [f"check {c['status']}: {c['name']}" for c in e["checks"]]
    full += [f"tree {e.get('tree') or 'not measured'}"]
    gate = " ".join(f"{k}={v}" for k, v in e["gate"].items())
    return (
        "<tr>"
        f'<td class="num">{e["index"]}</td>'
        f'<td class="e"><div class="id">{escape(e["id"])}</div><div class="title">{escape(e["title"])}</div>'
        f'<div class="title">{escape(e["area"])} · upstream {escape(e["upstream"])}'
        + (f" · gate {escape(gate)}" if gate else "")
        + f'</div><details><summary>commit-message lines</summary><pre>{escape(chr(10).join(full))}</pre></details></td>'
        f"<td>{drift}</td><td class='m'>{_metric_cell(e, 'tpot')}</td><td class='m'>{_metric_cell(e, 'ttft')}</td>"
        f"<td>{claims}</td><td>{_badge(e['outcome'], title=e['outcome_reason'])}</td>"
        "</tr>"
    )


def _plot(svg: str | None, empty: str, wide: bool = False) -> str:
    body = svg or f'<div class="empty">{escape(empty)}</div>'
    return f'<div class="plot-box{" wide" if wide else ""}">{body}</div>'


def render(report: Mapping[str, Any], *, title: str | None = None) -> str:
    """The HTML page for ``report`` (a :meth:`Report.as_dict` document)."""
    r, s = report, report["summary"]
    verdicts: dict[str, dict[str, Any]] = {"tpot": {}, "ttft": {}}
    for e in r["entries"]:
        for m in e["metrics"]:
            verdicts.setdefault(m["metric"], {})[e["id"]] = m.get("comparison")
    figs = []
    for metric, label in (("tpot", "TPOT"), ("ttft", "TTFT")):
        unit = next((m["unit"] for e in r["entries"] for m in e["metrics"] if m["metric"] == metric and m["unit"]), "ms")
        figs.append(_plot(plots.waterfall(r["prefixes"], metric, label, unit, verdicts.get(metric, {})),
                          f"{label}: no results in the store"))
    figs.append(_plot(plots.accuracy(r["accuracy"]), "gsm8k: no per-question results in the store"))
    if r["history"]:
        # the first history sits beside the accuracy plot; further ones pair up, an odd last one spans the row
        for i, h in enumerate(r["history"]):
            wide = i > 0 and i == len(r["history"]) - 1 and i % 2 == 1
            figs.append(_plot(plots.history(h, wide=wide), "", wide=wide))
    else:
        figs.append(_plot(None, "nightly history: no top-of-stack results yet"))
    kernel = []
    for e in r["entries"]:
        for m in e["metrics"]:
            if m["metric"] not in ("tpot", "ttft") and m.get("comparison"):
                kernel.append(f"<li><span class='id'>{escape(e['id'])}</span> {_badge(m['comparison']['verdict'])} "
                              f"<span class='mono'>{escape(comparison_text(m['comparison'], with_metric=True))}</span></li>")
    hist_txt = []
    for h in r["history"]:
        last = h["points"][-1]
        cps = h["change_points"]
        t = f"{h['label']} {last['median']:.4g} {h['unit']} on {last['base']}"
        if cps:
            c = cps[-1]
            t += f"; {c['direction']} from {c['day']} ({c['comparison']['change_pct']:+.1f} %)"
        else:
            t += "; steady"
        hist_txt.append(t)
    hl = s["headline"]
    cards = [
        ("Entries", str(s["entries"]), counts_text(s["outcomes"], OUTCOME_ORDER)),
        ("Claims", str(sum(s["claims"].values())), counts_text(s["claims"], ("met", "not-met", "contradicted", "unknown", "not-measured"))),
        ("Drift", str(sum(v for k, v in s["drift"].items() if k in ("conflict", "obsolete", "applies-but-no-effect", "error"))) + " need a human",
         counts_text(s["drift"], ("clean", "3-way", "already-upstream", "conflict", "obsolete"))),
        ("Nightly", f"{sum(len(h['points']) for h in r['history'][:1])} nights",
         " · ".join(hist_txt) or "no history yet"),
    ]
    head = escape(title or "vpatch report")
    big = _badge(hl, hl).replace('class="badge', 'class="badge big', 1)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{head}: {escape(r['series'])} on {escape(str(r['base']))}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{head}: {escape(r['series'])} on {escape(str(r['base']))}{big}</h1>",
        f"<div class='sub'>upstream {escape(upstream_text(r.get('upstream')))} · generated {escape(when(r['generated_at']))}"
        + (f" · store {escape(str(r['store']))}" if r.get("store") else "") + "</div></header><main>",
        "<div class='cards'>" + "".join(
            f"<div class='card'><h3>{escape(t)}</h3><div class='n'>{escape(n)}</div><div class='d'>{escape(d)}</div></div>"
            for t, n, d in cards) + "</div>",
        "<div class='plots'>" + "".join(figs) + "</div>",
        "<h2>Entries</h2><table><thead><tr><th>#</th><th>entry</th><th>drift</th><th>TPOT</th><th>TTFT</th>"
        "<th>claims</th><th>result</th></tr></thead><tbody>",
        "".join(_entry_row(e) for e in r["entries"]),
        "</tbody></table>",
    ]
    if kernel:
        parts.append("<h2>Other metrics</h2><ul class='notes'>" + "".join(kernel) + "</ul>")
    for h in r["history"]:
        if h["change_points"]:
            parts.append(f"<h2>Change points: nightly {escape(h['label'])}</h2><ul class='notes'>" + "".join(
                f"<li>{_badge(cp['direction'])} from {escape(cp['day'])} ({escape(str(cp.get('previous_base')))} → "
                f"{escape(str(cp.get('base')))}): <span class='mono'>{escape(cp['describe'])}</span></li>"
                for cp in h["change_points"]) + f"</ul><p class='title'>Method: {escape(h['method'])}.</p>")
    parts.append("<h2>How to read this</h2><ul class='notes'>" + "".join(f"<li>{escape(n)}</li>" for n in r.get("notes", []))
                 + "<li>Waterfall: the base is the blue bar; each entry's bar runs from the previous prefix's median to its "
                   "own, green when the entry made it better, red worse, grey same, hatched yellow unknown; "
                   "whiskers are each prefix's 95 % CI.</li></ul>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
