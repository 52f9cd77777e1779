"""A real bisect on this machine: 16 entries, one slows a real CPU workload by 30 %, found by
`vpatch bisect --run` through the real apply / prefix / measure / store machinery; killed mid-way,
it resumes to the same culprit. And `vpatch validate` on a custom metric reuses stored boots."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import SeriesDir, make_patch

from workloads import N0, WORK, workload_project

CULPRIT = 11


def make_slow_series(tmp_path, factor: float = 1.3) -> SeriesDir:
    up = workload_project(tmp_path / "project", {f"mods/m{i:02d}.py": f"# module {i}\n" for i in range(16)})
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(up.path))
    for i in range(1, 17):
        edits = {f"mods/m{i - 1:02d}.py": f"# module {i - 1}\nTUNED = {i}\n"}
        if i == CULPRIT:  # the hidden regression: 30 % more work per call. This VM's processes land fast
            # or ~35 % slow (17 % spread, benchmarks/data/cpu_workload_trace.json): replayed, a 12 % step is
            # named in ~40 % of 200-run bisects, 30 % in all (benchmarks/bench_bisect_trace.py)
            edits["work.py"] = WORK.format(n=int(N0 * factor))
        if i > CULPRIT:  # later entries keep the slower work (they sit on top of it)
            pass
        s.add_patch(f"e{i:02d}", make_patch(up, edits, f"entry {i}"))
        if i == CULPRIT:
            up.write("work.py", WORK.format(n=int(N0 * factor)))
            up.commit("carry the culprit forward for later patches")
    return s


@pytest.fixture
def slow_series(tmp_path):
    return make_slow_series(tmp_path)


def test_bisect_run_finds_the_slow_entry_and_resumes(slow_series, vp):
    s = slow_series
    r = vp(s.root, "--json", "apply")
    assert r.rc == 0, r.err
    cmd = f"{sys.executable} {{tree}}/bench.py"
    # start, and kill -9 after a few measurements
    proc = subprocess.Popen([sys.executable, "-m", "vpatch.manager.cli.main", "bisect", "--run", cmd], cwd=s.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = s.root / ".vpatch" / "bisect" / "state.json"
    import json
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if len(json.loads(state.read_text()).get("log", [])) >= 4:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    logged = len(json.loads(state.read_text())["log"])
    assert logged >= 4
    r = vp(s.root, "--json", "bisect", "status")
    assert r.rc == 0 and "result" not in r.json
    # resume with no arguments
    r = vp(s.root, "--json", "bisect", timeout=900)
    assert r.rc == 0, r.err
    res = r.json["result"]
    assert res["status"] == "found", res
    assert res["culprit_label"] == f"e{CULPRIT:02d}"
    assert 15.0 < res["shift_pct"] < 50.0
    assert len(r.json["log"]) > logged
    # log and status show the evidence; reset forgets it
    assert vp(s.root, "bisect", "log").out.count("median") >= len(r.json["log"]) - 2
    assert "culprit: e11" in vp(s.root, "bisect", "status").out
    other = vp(s.root, "bisect", "--run", "other")  # a different bisect is refused until reset
    assert other.rc == 1 and "already in progress" in other.err and "bisect reset" in other.err
    assert vp(s.root, "--json", "bisect", "reset").json["reset"] is True


def test_validate_custom_metric_reuses_stored_boots(tmp_path, vp):
    # this checks reuse, not sensitivity: twice the work, so this VM's bimodal processes (fast or ~35 %
    # slow) cannot blur it in 6 + 6 boots (+30 % read +17 %, p 0.10 in CI on 2026-12-03)
    s = make_slow_series(tmp_path, 2.0)
    (s.root / "vpatch.toml").write_text(
        '[measure.metrics.cpu_ms]\ncommand = "' + sys.executable + ' {tree}/bench.py"\nunit = "ms"\nruns_per_boot = 2\n')
    assert vp(s.root, "apply").rc == 0
    r = vp(s.root, "--json", "validate", "--metric", "cpu_ms", "--entries", "e10..e12", "--budget", "6")
    assert r.rc == 0, r.err
    rows = {x["entry"]: x for x in r.json["rows"]}
    assert set(rows) == {"e10", "e11", "e12"}
    assert rows["e11"]["verdict"] == "worse", rows["e11"]["describe"]
    assert rows["e11"]["describe"].startswith("cpu_ms ")
    assert r.json["measured_boots"] > 0
    r2 = vp(s.root, "--json", "validate", "--metric", "cpu_ms", "--entries", "e10..e12", "--budget", "6")
    assert r2.rc == 0 and r2.json["measured_boots"] == 0
    assert [x["describe"] for x in r2.json["rows"]] == [x["describe"] for x in r.json["rows"]]
