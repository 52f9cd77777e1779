"""`vpatch report` from a real SQLite results store filled with synthetic samples (a planted regression).

What a user checks is checked here: the numbers, verdicts and claim results appear in the Markdown, the HTML
and the JUnit XML; the HTML is self-contained; the JUnit parses and counts its cases and failures.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from vpatch.manager.series import parse_series
from vpatch.validation import report as rp
from vpatch.validation import report_html, report_junit, report_md
from vpatch.validation.config import ValidateConfig
from vpatch.validation.store import GATE_NONE, RunContext, new_boot_id, open_store

SERIES = """
[series]
name = "demo-series"
base = "v0.28.0"
source = "pypi"

[[entry]]
id = "router-fix"
title = "qwen3_moe: no duplicate router GEMV"
area = "model"
upstream = { merged = "v0.29.0" }
checks = ["python checks/router.py"]
[[entry.claims]]
metric = "tpot"
direction = "lower"
before = 15.20
after = 15.00
unit = "ms"

[[entry]]
id = "mrope-cache"
title = "MRoPE: gather cos/sin once per step"
area = "rotary"
checks = ["python checks/mrope.py"]
[[entry.claims]]
metric = "tpot"
direction = "lower"

[[entry]]
id = "shared-experts"
title = "fused_moe: shared experts on the aux stream"
area = "moe-runner"
[[entry.claims]]
metric = "tpot"
direction = "same"

[[entry]]
id = "moe-int4"
title = "csrc/rocm: fused MoE int4 split-K GEMV"
area = "csrc"
[[entry.claims]]
metric = "tpot"
direction = "lower"
change_pct = -3.0
[[entry.claims]]
metric = "kernel:moe_gemm1"
direction = "lower"
before = 79.7
after = 66.4
unit = "us"
[[entry.claims]]
metric = "gsm8k"
direction = "same"

[[entry]]
id = "hybrid-w4a16"
title = "fused_moe: hybrid W4A16 experts"
area = "fused_moe"
gate = { VLLM_MOE_HYBRID_W4A16 = "1" }
[[entry.claims]]
metric = "tpot"
direction = "lower"
change_pct = -2.0
"""

CFG = ValidateConfig()
HOST = {"id": "gfx1151-a", "hostname": "strix", "cpu": "x", "gpus": ["gfx1151"], "driver": "1", "rocm": "6.4"}
DAY = 86400.0
T0 = 1767225600.0  # 2026-01-01 UTC
NEW_BASE = "v0.29.0"
# relative TPOT change each entry makes; moe-int4 is the planted regression (+2 % where −3 % is claimed)
EFFECT = {"router-fix": -0.013, "mrope-cache": -0.010, "shared-experts": 0.0, "moe-int4": +0.020,
          "hybrid-w4a16": -0.025}


def _ctx(kind, tree, entry, idx, base=NEW_BASE, gate=GATE_NONE, top=False, label=None):
    return RunContext(tree=tree, base=base, config_hash=CFG.config_hash(kind), config_content=CFG.canonical(kind),
                      entry_id=entry, prefix_index=idx, gate=gate, host=HOST, versions={"vllm": "0.29.0"},
                      top=top, label=label)


def _boots(rng, level, n_boots=6, runs=3, boot_sd=0.003, run_sd=0.0015):
    return [list(level * (1 + rng.normal(0, boot_sd)) * (1 + rng.normal(0, run_sd, runs))) for _ in range(n_boots)]


def make_store(path: Path, *, seed: int = 7, nights: int = 20, regress_at: int = 14) -> Path:
    """A results store with every prefix of SERIES on v0.29.0 (latency, kernel, gsm8k) and 20 nightlies."""
    rng = np.random.default_rng(seed)
    series = parse_series(SERIES, Path("series.toml"))
    t_now = T0 + nights * DAY
    with open_store(path) as s:
        tpot, ttft = 15.20, 48.0
        prefixes = [(0, None, 1.0)] + [(i, e.id, EFFECT[e.id]) for i, e in enumerate(series.entries, 1)]
        q = 200
        correct = rng.random(q) < 0.85
        for idx, eid, eff in prefixes:
            tree = f"tree{idx:02d}" + "0" * 34
            if idx:
                tpot *= 1 + eff
                ttft *= 1 + eff / 2
            e = series.entries[idx - 1] if idx else None
            gates = ("off", "on") if e is not None and e.gate else (GATE_NONE,)
            for g in gates:
                level = tpot / (1 + eff) if g == "off" else tpot
                for b, boot in enumerate(_boots(rng, level)):
                    c = _ctx("latency", tree, eid, idx, gate=g)
                    bid = new_boot_id()
                    s.add_samples(c, "tpot", boot, unit="ms", boot_id=bid, created_at=t_now + idx * 600 + b)
                    s.add_samples(c, "ttft", [ttft * (1 + rng.normal(0, 0.004))], unit="ms", boot_id=bid,
                                  created_at=t_now + idx * 600 + b)
            if eid in ("mrope-cache", "moe-int4"):  # kernel micro-benchmark before/after the int4 kernel
                level = 79.7 if eid == "mrope-cache" else 66.9
                c = _ctx("latency", tree, eid, idx)
                s.add_samples(c, "kernel:moe_gemm1", list(level * (1 + rng.normal(0, 0.01, 200))), unit="us",
                              boot_id=new_boot_id(), created_at=t_now + idx * 600)
            if eid == "moe-int4":  # the regression also costs 9 % of gsm8k answers
                flip = np.flatnonzero(correct)[:18]
                correct = correct.copy()
                correct[flip] = False
            for flt, off in (("flexible-extract", 0), ("strict-match", 3)):
                ok = correct.copy()
                ok[:off] = False
                s.add_accuracy_items(_ctx("accuracy", tree, eid, idx), [(i, bool(v)) for i, v in enumerate(ok)],
                                     filter_name=flt, boot_id=new_boot_id(), created_at=t_now + idx * 600)
        # nightly history of the top of the stack: steady on v0.28.0, +2.5 % from night `regress_at` on v0.29.0
        for n in range(nights):
            base = "v0.28.0" if n < regress_at else NEW_BASE
            level = 14.20 * (1.025 if n >= regress_at else 1.0)
            for b, boot in enumerate(_boots(rng, level, n_boots=3, runs=2)):
                c = _ctx("latency", f"top-{base}" + "0" * 30, "hybrid-w4a16", 5, base=base, top=True, label="nightly")
                s.add_samples(c, "tpot", boot, unit="ms", boot_id=new_boot_id(), created_at=T0 + n * DAY + b * 60)
    return path


DRIFT = {
    "onto": NEW_BASE, "onto_commit": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", "base": "v0.28.0",
    "base_commit": "0123456789abcdef0123456789abcdef01234567", "commits": 412,
    "entries": [
        {"id": "router-fix", "status": "already-upstream", "how": "declared", "detail": "merged in v0.29.0"},
        {"id": "mrope-cache", "status": "clean", "checks": [{"command": "python checks/mrope.py", "ok": True}]},
        {"id": "shared-experts", "status": "3-way", "detail": "context moved in fused_moe/runner.py"},
        {"id": "moe-int4", "status": "clean"},
        {"id": "hybrid-w4a16", "status": "clean"},
    ],
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    store_path = make_store(d / "results.db")
    series = parse_series(SERIES, d / "series.toml")
    with open_store(store_path, create=False) as s:
        rep = rp.build_report(series, s, drift=DRIFT, now=T0 + 21 * DAY)
    return rep.as_dict(), d, store_path


def _entry(r, eid):
    return next(e for e in r["entries"] if e["id"] == eid)


def _metric(e, m):
    return next(x for x in e["metrics"] if x["metric"] == m)


def test_model_numbers_verdicts_and_claims(built):
    r, _, _ = built
    assert r["base"] == NEW_BASE and r["upstream"]["from"] == "v0.28.0" and r["upstream"]["commits"] == 412
    assert [e["id"] for e in r["entries"]] == ["router-fix", "mrope-cache", "shared-experts", "moe-int4", "hybrid-w4a16"]
    bad = _entry(r, "moe-int4")
    c = _metric(bad, "tpot")["comparison"]
    assert c["verdict"] == "worse" and 1.0 < c["change_pct"] < 3.0 and c["p_value"] <= 0.01
    assert _metric(bad, "tpot")["against"] == "shared-experts"
    claims = {cl["metric"]: cl for cl in bad["claims"]}
    assert claims["tpot"]["status"] == "contradicted"
    assert claims["kernel:moe_gemm1"]["status"] == "met"
    assert claims["gsm8k"]["status"] == "contradicted"
    assert bad["outcome"] == "failed" and "contradicted" in bad["outcome_reason"]
    good = _entry(r, "mrope-cache")
    assert _metric(good, "tpot")["comparison"]["verdict"] == "better"
    assert good["claims"][0]["status"] == "met" and good["outcome"] == "passed"
    assert good["checks"] == [{"name": "python checks/mrope.py", "status": "passed", "detail": ""}]
    assert _entry(r, "router-fix")["checks"][0]["status"] == "not-run"
    assert _entry(r, "shared-experts")["drift"]["status"] == "3-way"
    # the gated entry is judged gate off -> on on its own tree
    hy = _entry(r, "hybrid-w4a16")
    assert _metric(hy, "tpot")["against"] == "hybrid-w4a16 gate off"
    assert _metric(hy, "tpot")["comparison"]["verdict"] == "better" and hy["claims"][0]["status"] == "met"
    # the commit-message line
    assert re.match(r"TPOT \d+\.\d+ → \d+\.\d+ ms \(\+\d\.\d+? %, 95 % CI .*, p .*, n 6\+6\): worse",
                    _metric(bad, "tpot")["describe"])
    assert r["summary"]["headline"] == "regression"


def test_accuracy_paired_against_previous_prefix(built):
    r, _, _ = built
    flex = next(a for a in r["accuracy"] if a["filter"] == "flexible-extract")
    assert [p["index"] for p in flex["points"]] == [0, 1, 2, 3, 4, 5]
    p4 = flex["points"][4]
    assert p4["paired"]["verdict"] == "worse" and p4["paired"]["only_a"] == 18 and p4["paired"]["only_b"] == 0
    assert flex["points"][5]["paired"]["verdict"] == "same" or flex["points"][5]["paired"]["only_a"] == 0
    assert {a["filter"] for a in r["accuracy"]} == {"flexible-extract", "strict-match"}


def test_nightly_change_point_found_where_planted(built):
    r, _, _ = built
    h = next(h for h in r["history"] if h["metric"] == "tpot")
    assert len(h["points"]) == 20
    assert [cp["index"] for cp in h["change_points"]] == [14]
    cp = h["change_points"][0]
    assert cp["direction"] == "worse" and cp["previous_base"] == "v0.28.0" and cp["base"] == NEW_BASE
    assert r["summary"]["history_regressions"]


def test_change_points_pure():
    rng = np.random.default_rng(1)
    flat = [list(14.2 * (1 + rng.normal(0, 0.003, 3))) for _ in range(30)]
    assert rp.change_points(flat) == []
    step = flat[:10] + [[v * 0.97 for v in p] for p in flat[10:20]] + [[v * 1.0 for v in p] for p in flat[20:]]
    cps = rp.change_points(step)
    assert [c["index"] for c in cps] == [10, 20]
    assert [c["direction"] for c in cps] == ["better", "worse"]
    # the newest night alone is enough when its shift is clear
    last = flat[:12] + [[v * 1.03 for v in flat[12]]]
    assert [c["index"] for c in rp.change_points(last)] == [12]
    assert rp.change_points([]) == [] and rp.change_points([[1.0]]) == []


def test_markdown_shows_what_a_user_checks(built):
    r, _, _ = built
    md = report_md.render(r)
    assert len(md.encode()) < 100_000
    assert "regression" in md.splitlines()[0]
    row = next(line for line in md.splitlines() if "`moe-int4`" in line and line.startswith("|"))
    bad = _metric(_entry(r, "moe-int4"), "tpot")["comparison"]
    assert f"{bad['median_a']:.2f} → {bad['median_b']:.2f} ms" in row
    assert "worse" in row and "contradicted" in row and "failed" in row
    assert "v0.28.0 → v0.29.0" in md and "412 upstream commits" in md
    assert "change point" in md and "3-way" in md
    assert "moe_gemm1" in md
    # cut to fit a small budget, still a valid table head
    small = report_md.render(r, max_bytes=3000)
    assert len(small.encode()) <= 3000 or small.count("\n|") >= 3
    assert "| # | entry |" in small


def test_html_is_self_contained_and_shows_plots(built, tmp_path):
    r, _, _ = built
    html = report_html.render(r)
    assert html.count("<svg") >= 4  # TPOT, TTFT waterfalls, accuracy, history
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=\s*[\"']?(https?:)?//", html, re.I)
    assert "<script" not in html and "@import" not in html and "url(http" not in html
    bad = _metric(_entry(r, "moe-int4"), "tpot")["comparison"]
    assert f"{bad['median_a']:.2f} → {bad['median_b']:.2f} ms" in html
    assert "contradicted" in html and "3-way" in html and "already-upstream" in html
    ET.fromstring(html[html.index("<svg"):html.index("</svg>") + 6])  # each plot is well-formed SVG


def test_junit_parses_and_counts(built):
    r, _, _ = built
    xml = report_junit.render(r)
    root = ET.fromstring(xml)
    cases = root.findall(".//testcase")
    entries = [c for c in cases if c.get("classname") == "vpatch.entry"]
    checks = [c for c in cases if c.get("classname") == "vpatch.check"]
    nightly = [c for c in cases if c.get("classname") == "vpatch.nightly"]
    assert len(entries) == 5 and len(checks) == 2 and len(nightly) == 1
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"04 moe-int4", "TPOT history"}
    # no evidence, no pass: router-fix's check never ran, shared-experts' claim is undecided
    assert {c.get("name") for c in cases if c.find("skipped") is not None} == \
        {"01 router-fix", "01 router-fix: python checks/router.py", "03 shared-experts"}
    suite = root.find("testsuite")
    assert suite.get("tests") == str(len(cases)) and suite.get("failures") == "2" and suite.get("skipped") == "3"
    f = next(c for c in entries if c.get("name") == "04 moe-int4").find("failure")
    assert f.get("type") == "regression" and "TPOT" in f.text and "worse" in f.text


def test_drift_needing_a_human_fails_and_unmeasured_is_skipped(tmp_path):
    series = parse_series(SERIES, tmp_path / "series.toml")
    drift = {"check": {"onto": "v0.30.0", "base": "v0.28.0", "entries": [
        {"id": "router-fix", "status": "already-upstream"},
        {"id": "mrope-cache", "status": "conflict", "detail": "rotary_embedding.py hunk 2"},
        {"id": "shared-experts", "status": "clean"},
        {"id": "moe-int4", "status": "obsolete"},
        {"id": "hybrid-w4a16", "status": "applies-but-no-effect",
         "checks": [{"command": "python checks/hybrid.py", "ok": False, "output": "gate had no effect"}]},
    ]}}
    with open_store(tmp_path / "empty.db") as s:
        r = rp.build_report(series, s, drift=drift).as_dict()
    assert r["upstream"]["to"] == "v0.30.0"
    # clean or upstream as text, but nothing checked or measured: never "passed"
    assert [e["outcome"] for e in r["entries"]] == ["upstream", "needs-human", "not-measured", "needs-human",
                                                    "needs-human"]
    assert r["summary"]["headline"] == "needs a human"
    root = ET.fromstring(report_junit.render(r))
    fails = [c.find("failure") for c in root.iter("testcase") if c.find("failure") is not None]
    assert {f.get("type") for f in fails} == {"drift"} and len(fails) == 3
    # without any drift result and without results everything is skipped, nothing fails
    with open_store(tmp_path / "empty2.db") as s:
        r2 = rp.build_report(series, s).as_dict()
    root2 = ET.fromstring(report_junit.render(r2))
    assert root2.find("testsuite").get("failures") == "0"
    assert {e["outcome"] for e in r2["entries"]} <= {"not-checked", "not-measured"}
    assert r2["summary"]["headline"] == "not measured"
    assert "not measured" in report_md.render(r2)
    html = report_html.render(r2)
    assert "no results in the store" in html


def test_cli_writes_all_three(built, tmp_path, vp):
    _, d, store_path = built
    root = tmp_path / "proj"
    (root / "patches").mkdir(parents=True)
    (root / "patches" / "series.toml").write_text(SERIES)
    for eid in ("router-fix", "mrope-cache", "shared-experts", "moe-int4", "hybrid-w4a16"):
        (root / "patches" / f"{eid}.patch").write_text("")
    (root / "drift.json").write_text(json.dumps(DRIFT))
    res = vp(root, "--json", "report", "--store", str(store_path), "--drift", "drift.json",
             "--html", "out/r.html", "--markdown", "out/r.md", "--junit", "out/r.xml")
    assert res.rc == 1, res.err + res.out  # a regression: exit 1 so CI notices
    data = res.json
    assert data["summary"]["headline"] == "regression"
    assert set(data["written"]) == {"html", "markdown", "junit"}
    for f in ("r.html", "r.md", "r.xml"):
        assert (root / "out" / f).stat().st_size > 500
    ET.parse(root / "out" / "r.xml")
    res = vp(root, "report", "--store", str(store_path), "--markdown", "-", "--no-fail")
    assert res.rc == 0, res.err
    assert "`moe-int4`" in res.out
    res = vp(root, "report", "--store", str(tmp_path / "missing.db"))
    assert res.rc != 0 and "no results store" in res.err
    # no store yet but a drift result (the nightly stopped at `check`): the drift alone is reported
    drift = {"onto": "v0.30.0", "base": "v0.28.0", "entries": [{"id": "mrope-cache", "status": "conflict"}]}
    (root / "check.json").write_text(json.dumps(drift))
    res = vp(root, "--json", "report", "--store", str(tmp_path / "missing.db"), "--drift", "check.json",
             "--markdown", "out/d.md")
    assert res.rc == 2, res.err  # drift needs a human
    assert "conflict" in (root / "out" / "d.md").read_text() and res.json["notes"][0].startswith("no results store")


def test_nothing_measured_is_never_green(tmp_path, vp):
    """`vpatch report` on an empty store, with a check result where every entry is clean: not "ok"."""
    import json

    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "series.toml").write_text(SERIES)
    drift = {"onto": "v0.29.0", "base": "v0.28.0", "entries": [
        {"id": e, "status": "clean"} for e in ("router-fix", "mrope-cache", "shared-experts", "moe-int4", "hybrid-w4a16")]}
    (tmp_path / "drift.json").write_text(json.dumps(drift))
    with open_store(tmp_path / "empty.db"):
        pass  # an empty results store: nothing measured yet
    r = vp(tmp_path, "--json", "report", "--no-fail", "--store", str(tmp_path / "empty.db"), "--drift",
           str(tmp_path / "drift.json"))
    assert r.rc == 0, r.err
    assert r.json["summary"]["headline"] == "not measured"
    assert "passed" not in r.json["summary"]["outcomes"]
    assert {e["outcome"] for e in r.json["entries"]} == {"not-checked", "not-measured"}
    h = vp(tmp_path, "report", "--no-fail", "--store", str(tmp_path / "empty.db"))
    assert "not measured" in h.out and " ok " not in h.out and "passed" not in h.out
    assert "upstream upstream" not in h.out and "(upstream range not given)" in h.out
