"""The nightly pipeline end to end on a small project: a clean night, then a night where upstream
moved and a planted entry slows a real CPU workload: the nightly rebases, validates, sees the
regression against the last good night, bisects (upstream first, then the series) and names the entry."""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import SeriesDir, git, make_patch
from workloads import N0, WORK, workload_project

from vpatch.ci.nightly import corroborated, decide_compare, named_by_validate, names_regression


def test_decide_compare_pure():
    assert decide_compare(None, 1.0) == "ok"
    assert decide_compare({"verdict": "worse", "change_pct": 3.0}, 1.0) == "regression"
    assert decide_compare({"verdict": "worse", "change_pct": 0.6}, 1.0) == "ok"
    assert decide_compare({"verdict": "unknown", "change_pct": 5.0}, 1.0) == "ok"
    assert decide_compare({"verdict": "better", "change_pct": -3.0}, 1.0) == "ok"


def test_an_upstream_culprit_counts_only_when_it_is_the_regression():
    found = {"status": "found", "shift_pct": 26.8, "below_threshold": False}
    assert names_regression(found) and not names_regression(found, lower_is_better=False)
    # a noisy upstream search 'found' v0.29.0 making the workload 27 % faster: not the regression hunted
    assert not names_regression({**found, "shift_pct": -26.8})
    assert not names_regression({**found, "below_threshold": True})
    assert not names_regression({"status": "ambiguous", "shift_pct": 30.0}) and not names_regression(None)


def _row(entry, verdict, change, metric="tpot"):
    return {"entry": entry, "reference": "parent", "metric": metric, "verdict": verdict, "describe": "",
            "comparison": {} if change is None else {"change_pct": change, "ci_low_pct": change - 1,
                                                     "ci_high_pct": change + 1, "p_value": 0.001, "n_a": 4, "n_b": 4}}


def test_named_by_validate_only_worse_rows_at_the_threshold_pure():
    v = {"tpot,outputs": {"rows": [_row("a", "same", 0.4), _row("b", "worse", 82.0), _row("c", "worse", 12.0),
                                   _row("d", "unknown", 60.0), _row("e", "better", -40.0),
                                   _row("b", "differs", None, metric="outputs")]}}
    assert [n["entry"] for n in named_by_validate(v, "tpot", 30.0)] == ["b"]
    assert [n["entry"] for n in named_by_validate(v, "tpot", 10.0)] == ["b", "c"]
    assert named_by_validate(v, "ttft", 1.0) == [] and named_by_validate(None, "tpot", 1.0) == []
    assert named_by_validate(v, "tpot", 30.0)[0]["boots"] == [4, 4]


def test_an_unknown_comparison_of_tops_counts_when_validate_names_an_entry_pure():
    # the CPU-engine nightly, 2026-12-03: tops +234 %, CI +46...+663 %, p 0.04 at 4 + 4 boots ("unknown"), while
    # the slow entry's own row read +288 %, p 0.0011: a regression
    cmp = {"verdict": "unknown", "change_pct": 233.5, "lower_is_better": True}
    named = [{"entry": "slow", "change_pct": 287.8}]
    assert corroborated(cmp, named, 30.0)
    assert not corroborated(cmp, [], 30.0)  # nothing named: the unknown comparison stays no regression
    assert not corroborated({**cmp, "change_pct": 12.0}, named, 30.0)  # the tops moved less than the threshold
    assert not corroborated({**cmp, "change_pct": -50.0}, named, 30.0)  # ... or the better way
    assert corroborated({**cmp, "change_pct": -50.0, "lower_is_better": False}, named, 30.0)  # accuracy-like metric
    assert not corroborated(None, named, 30.0)


@pytest.mark.timeout(1200)
def test_nightly_clean_then_planted_regression(tmp_path, vp):
    up = workload_project(tmp_path / "project", {f"mods/m{i}.py": f"# module {i}\n" for i in range(6)})
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(up.path))
    for i in range(1, 5):
        s.add_patch(f"e{i}", make_patch(up, {f"mods/m{i}.py": f"# module {i}\nX = {i}\n"}, f"entry {i}"))
    (s.root / "vpatch.toml").write_text(
        "[nightly]\nmetrics = [\"cpu_ms\"]\nthreshold_pct = 3.0\nbisect = \"always\"\n"
        "[validate]\nboots_min = 3\nboots_max = 12\n"
        f"[measure.metrics.cpu_ms]\ncommand = \"{sys.executable} {{tree}}/bench.py\"\nunit = \"ms\"\nruns_per_boot = 2\n")
    # night 1: clean
    r = vp(s.root, "--json", "nightly", "--upstream", "v1.0.0", timeout=1200)
    assert r.rc == 0, r.err + r.out[-3000:]
    n1 = r.json
    assert n1["status"] == "clean" and n1["top_tree"]
    for f in ("report.html", "summary.md", "junit.xml"):
        assert (s.root / ".vpatch/nightly/report" / f).exists()
    # upstream moves (a harmless release) and someone lands an entry that doubles the work: this VM's processes
    # land fast or ~35 % slow, and a 30 % entry read +21.8 %, p 0.028 at 12 + 12 boots ("unknown", no
    # regression) or was not named within the 120-run bisect on 2026-12-03 (2 of 3 runs here)
    up.write("README", "1.1\n")
    up.commit("release 1.1", tag="v1.1.0")
    git(up.path, "checkout", "-q", "v1.0.0")
    s.add_patch("e5-slow", make_patch(up, {"work.py": WORK.format(n=int(N0 * 2.0))}, "work: more iterations"))
    git(up.path, "checkout", "-q", "main")
    # night 2
    r = vp(s.root, "--json", "nightly", "--upstream", "v1.1.0", timeout=1200)
    assert r.rc == 20, r.err + r.out[-3000:]
    n2 = r.json
    assert n2["status"] == "regression" and n2["regression"] == "cpu_ms"
    assert n2["compare"]["cpu_ms"]["verdict"] == "worse" and n2["compare"]["cpu_ms"]["change_pct"] > 3
    assert n2["bisect"]["upstream"]["status"] != "found"  # the upstream move did not do it
    assert n2["bisect"]["series"]["culprit_label"] == "e5-slow"
    # validate's own row of the slow entry already named it (bisect = "unexplained", the default, stops there)
    assert [n["entry"] for n in n2["named_by_validate"]] == ["e5-slow"], n2["named_by_validate"]
    assert 'base = "v1.1.0"' in s.series.read_text()  # the series moved with the rebase
    md = (s.root / ".vpatch/nightly/report/summary.md").read_text()
    assert "cpu_ms" in md
    junit = ET.parse(s.root / ".vpatch/nightly/report/junit.xml").getroot()
    assert junit.iter("testcase")
    hist = json.loads((s.root / ".vpatch/nightly/history.json").read_text())
    assert [h["status"] for h in hist] == ["clean", "regression"]
