"""Plots for the HTML report: matplotlib figures rendered to inline SVG strings (no files, no network).

Every function takes parts of the report model (:mod:`.report`) and returns ``<svg …>…</svg>`` ready to
be pasted into HTML.  Text stays text (``svg.fonttype = none``) so the page is small and searchable;
each figure gets its own id salt so several SVGs can live in one page without clashing clip-path ids.
"""
from __future__ import annotations

import io
import math
import re
from typing import Any
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

COLORS = {"better": "#2e9d57", "worse": "#d1423f", "same": "#8a94a6", "unknown": "#c9b458", None: "#b8c0cc"}
BASE_COLOR = "#5b7bb5"
_counter = [0]

_RC: dict[Any, Any] = {  # Any keys: matplotlib's stubs want each rc key as a literal
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e9ef",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "axes.edgecolor": "#9aa3b2",
    "axes.titleweight": "bold",
    "axes.titlesize": 11,
    "axes.titlelocation": "left",
}


def _to_svg(fig: Any) -> str:
    _counter[0] += 1
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"vpatch-fig-{_counter[0]}"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]                                 # drop the XML prolog and DOCTYPE
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    # scale with the page: keep the viewBox, let CSS set the width
    svg = re.sub(r'(<svg[^>]*?)\swidth="[^"]*"\s+height="[^"]*"', r'\1 class="plot" preserveAspectRatio="xMinYMin meet"',
                 svg, count=1)
    return svg


def _signed(x: float, d: int = 1) -> str:
    s = f"{abs(x):.{d}f}"
    return s if float(s) == 0 else ("+" if x > 0 else "\u2212") + s


def waterfall(prefixes: Sequence[Mapping], metric: str, label: str, unit: str,
              verdicts: Mapping[str, Mapping | None]) -> str | None:
    """A waterfall of ``metric`` across prefixes: the base as a bar, each entry as a floating bar from
    the previous prefix's median to its own, coloured by its verdict, with the 95 % CI of each prefix
    as an error bar and the change in % written on the bar.  None when nothing was measured."""
    pts = [(p, p["metrics"].get(metric)) for p in prefixes]
    if not any(s for _, s in pts):
        return None
    with matplotlib.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(max(6.5, 0.8 * len(pts) + 2.5), 3.9))
        vals = [s["median"] for _, s in pts if s]
        lows = [s["ci_low"] for _, s in pts if s]
        highs = [s["ci_high"] for _, s in pts if s]
        span = max(highs) - min(lows) or max(vals) * 0.01
        ymin, ymax = min(lows) - 0.35 * span, max(highs) + 0.25 * span
        prev = None
        xs, names = [], []
        for x, (p, s) in enumerate(pts):
            xs.append(x)
            names.append(p["label"] if p["entry"] else "base")
            if not s:
                ax.text(x, ymin + 0.04 * (ymax - ymin), "not\nmeasured", ha="center", va="bottom", fontsize=7.5,
                        color="#8a94a6")
                continue
            med = s["median"]
            if p["entry"] is None or prev is None:
                ax.bar(x, med - ymin, bottom=ymin, color=BASE_COLOR, width=0.62, zorder=2)
            else:
                cmp = verdicts.get(p["entry"]) or {}
                v = cmp.get("verdict")
                lo, hi = sorted((prev, med))
                h = max(hi - lo, (ymax - ymin) * 0.004)
                ax.bar(x, h, bottom=lo, color=COLORS.get(v, COLORS[None]), width=0.62, zorder=2,
                       hatch="//" if v == "unknown" else None, edgecolor="white" if v == "unknown" else None,
                       linewidth=0)
                ax.plot([x - 1 - 0.31, x + 0.31], [prev, prev], color="#6b7280", lw=0.8, ls=":", zorder=1)
                if cmp.get("change_pct") is not None:
                    txt = f"{_signed(cmp['change_pct'], 1 if abs(cmp['change_pct']) >= 1 else 2)} %"
                    ax.text(x + 0.36, (lo + hi) / 2, txt, ha="left", va="center", fontsize=8, color="#374151",
                            zorder=4)
            ax.errorbar(x, med, yerr=[[med - s["ci_low"]], [s["ci_high"] - med]], fmt="o", ms=3.5, color="#111827",
                        ecolor="#111827", elinewidth=1.1, capsize=3, zorder=3)
            prev = med
        ax.set_xticks(xs, names, rotation=28, ha="right", fontsize=8.5)
        ax.set_xlim(-0.6, len(pts) - 0.2)
        ax.set_ylim(ymin, ymax)
        ax.set_ylabel(f"{label} ({unit})" if unit else label)
        ax.set_title(f"{label} per prefix — median of boot medians, 95 % CI", pad=24)
        handles = [Patch(color=BASE_COLOR, label="base")] + [
            Patch(color=COLORS[k], label=k, hatch="//" if k == "unknown" else None) for k in ("better", "worse", "same", "unknown")]
        ax.legend(handles=handles, ncol=5, fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0),
                  borderaxespad=0.2, handlelength=1.4, columnspacing=1.2)
        return _to_svg(fig)


def accuracy(acc: Sequence[Mapping]) -> str | None:
    """Accuracy per prefix with ±1 stderr bars, one series per lm-eval filter; prefixes whose paired test
    against the previous prefix is significant are ringed (green better, red worse)."""
    if not any(a["points"] for a in acc):
        return None
    with matplotlib.rc_context(_RC):
        labels: list[str] = []
        for a in acc:
            for p in a["points"]:
                if p["label"] not in labels:
                    labels.append(p["label"])
        fig, ax = plt.subplots(figsize=(max(6.5, 0.8 * len(labels) + 2.5), 3.4))
        marks = ["o", "s", "^", "D"]
        off = 0.12
        for k, a in enumerate(acc):
            xs = [labels.index(p["label"]) + (k - (len(acc) - 1) / 2) * off for p in a["points"]]
            ys = [p["acc_pct"] for p in a["points"]]
            es = [p["stderr_pct"] for p in a["points"]]
            ax.errorbar(xs, ys, yerr=es, fmt=marks[k % 4] + "-", ms=4.5, lw=1, capsize=3, label=a["filter"])
            for x, p in zip(xs, a["points"], strict=True):
                v = (p.get("paired") or {}).get("verdict")
                if v in ("better", "worse"):
                    ax.plot(x, p["acc_pct"], "o", ms=11, mfc="none", mec=COLORS[v], mew=2)
        ax.set_xticks(range(len(labels)), ["base" if lb.startswith("base") else lb for lb in labels],
                      rotation=28, ha="right", fontsize=8.5)
        ax.set_ylabel("gsm8k exact match (%)")
        ax.set_title("gsm8k per prefix — ±1 stderr; ringed: paired McNemar p ≤ α vs previous prefix")
        ax.legend(fontsize=8, frameon=False, loc="lower left")
        return _to_svg(fig)


def history(h: Mapping, *, wide: bool = False) -> str | None:
    """Nightly history of the top of the stack: each night's boot medians (dots), their median (line),
    change points as dashed vertical lines annotated with the shift and the upstream base."""
    pts = h["points"]
    if not pts:
        return None
    with matplotlib.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(16, 3.6) if wide else (6.5, 3.4))
        xs = list(range(len(pts)))
        for x, p in zip(xs, pts, strict=True):
            ax.plot([x] * len(p["boot_medians"]), p["boot_medians"], ".", color="#9aa3b2", ms=4, zorder=2)
        ax.plot(xs, [p["median"] for p in pts], "-o", color=BASE_COLOR, ms=4, lw=1.4, zorder=3)
        ys = [v for p in pts for v in p["boot_medians"]]
        top = max(ys)
        for cp in h["change_points"]:
            x = cp["index"] - 0.5
            col = COLORS.get(cp["direction"], COLORS["unknown"])
            ax.axvline(x, color=col, ls="--", lw=1.4, zorder=1)
            c = cp["comparison"]
            txt = f"{_signed(c['change_pct'], 1 if abs(c['change_pct']) >= 1 else 2)} % ({cp['direction']})"
            if cp.get("base") and cp.get("previous_base") and cp["base"] != cp["previous_base"]:
                txt += f"\n{cp['previous_base']} → {cp['base']}"
            right = cp["index"] > len(pts) / 2  # keep the label inside the plot, on the emptier side
            ax.annotate(txt, (x, top), xytext=(-5 if right else 5, 0), textcoords="offset points",
                        ha="right" if right else "left", va="bottom", fontsize=8, color=col,
                        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": col, "lw": 0.6, "alpha": 0.9},
                        zorder=5)
        step = max(1, math.ceil(len(pts) / (16 if wide else 8)))
        ax.set_xticks(xs[::step], [p["day"][5:] for p in pts][::step], rotation=0, fontsize=8)
        ax.set_xlim(-0.5, len(pts) - 0.5)
        span = (max(ys) - min(ys)) or top * 0.01
        ax.set_ylim(min(ys) - 0.15 * span, top + 0.45 * span)
        unit = f" ({h['unit']})" if h.get("unit") else ""
        ax.set_ylabel(f"{h['label']}{unit}")
        ax.set_title(f"Nightly {h['label']}, top of the stack — dots: boots, line: median")
        return _to_svg(fig)
