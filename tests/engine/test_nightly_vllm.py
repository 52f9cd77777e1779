"""The nightly on real vLLM from the pypi source: the shipped series on v0.28.0, "upstream" v0.29.0,
the `empty` build, a CPU workload measured per prefix, reports written; then a planted regression
that the nightly names.

The workload is a small CPU benchmark that reads its size from the prefix's tree (an overlay entry lays
that size file into vLLM's tree); the planted regression is a patch entry that doubles it, and the nightly
names it from the entry's own validate row (the default, bisect = "unexplained": no bisect runs).

Margin (measured 2026-12-03 beside other jobs, load 2-4): the workload's boots spread ~15 % (CPU time of a
Python loop on a shared 2-core machine); with a +30 % entry and 80 runs the series bisect ran out of budget
between 11 entries, so the entry doubles the work and the bisect gets 160 runs."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(3000)]

BENCH = '''import pathlib, sys, time
work = pathlib.Path(sys.argv[1]) / "tools" / "vpatch_cpu_work.txt"
n = int(work.read_text()) if work.exists() else {n}
t0 = time.process_time()
s = 0
for _ in range(3):
    for i in range(n):
        s += i * i % 7
print((time.process_time() - t0) * 1000)
'''
N = 300_000


def _append(series, text):
    series.write_text(series.read_text().rstrip("\n") + "\n\n" + text)


def test_nightly_on_vllm_clean_then_regression(tmp_path, vp, vpatch_cache):
    root = tmp_path / "fork"
    root.mkdir()
    for d in ("patches", "overlay"):
        shutil.copytree(REPO_ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    series = root / "patches" / "series.toml"
    (root / "bench.py").write_text(BENCH.format(n=N))  # reads its work size from the prefix's tree
    work = root / "overlay" / "cpu-bench" / "tools" / "vpatch_cpu_work.txt"
    work.parent.mkdir(parents=True)
    work.write_text(f"{N}\n")  # the same size as the default: no effect
    _append(series, '[[entry]]\nid = "cpu-bench"\nkind = "overlay"\ntitle = "tools: the CPU workload size"\n')
    (root / "vpatch.toml").write_text(
        '[nightly]\nmetrics = ["cpu_ms"]\nthreshold_pct = 3.0\nbuild = "empty"\nbisect_budget = 160\n'
        'checks = false\n'  # effect checks on v0.29.0: test_upstream_vllm.py; here the measurement path
        '[validate]\nboots_min = 3\nboots_max = 12\n'
        f'[measure.metrics.cpu_ms]\ncommand = "{sys.executable} {root}/bench.py {{tree}}"\n'
        'unit = "ms"\nruns_per_boot = 2\n')
    env = {"VPATCH_CACHE": str(vpatch_cache)}
    r = vp(root, "--json", "nightly", "--upstream", "v0.28.0", env=env, timeout=3000)
    assert r.rc == 0, r.err + r.out[-3000:]
    n1 = r.json
    assert n1["status"] == "clean"
    assert [s["name"] for s in n1["stages"]] == ["apply", "status", "build", "validate", "report"]
    assert n1["build"].get("status", "ok") in ("ok", "reused") and n1["build"].get("target", "empty") == "empty", n1["build"]
    report = root / ".vpatch" / "nightly" / "report"
    assert "<svg" in (report / "report.html").read_text()
    # someone lands an entry that makes the workload do twice the work; upstream moves to v0.29.0
    slow = root / "patches" / "cpu-bench-slow.patch"
    slow.write_text(_slow_patch(f"{N}\n", f"{int(N * 2)}\n"))
    _append(series, '[[entry]]\nid = "cpu-bench-slow"\ntitle = "tools: more work"\n')
    r = vp(root, "--json", "nightly", "--upstream", "v0.29.0", env=env, timeout=3000)
    assert r.rc == 20, r.err + r.out[-3000:]
    n2 = r.json
    assert n2["check"]["entries"] and any(e["id"] == "shared-experts-stream-gate" and e["status"] == "already-upstream"
                                          for e in n2["check"]["entries"])
    assert 'base = "v0.29.0"' in series.read_text()
    # the default (bisect = "unexplained"): the slow entry's own validate row against its parent names it, so
    # neither bisect runs (tests/ci/test_nightly.py bisects with bisect = "always")
    assert [n["entry"] for n in n2["named_by_validate"]] == ["cpu-bench-slow"], json.dumps(n2.get("validate"))[:3000]
    assert "skipped" in n2["bisect"] and not any(s["name"].startswith("bisect") for s in n2["stages"]), n2["stages"]
    assert "cpu-bench-slow" in (report / "summary.md").read_text()


def _slow_patch(old: str, new: str) -> str:
    import difflib

    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        "a/tools/vpatch_cpu_work.txt", "b/tools/vpatch_cpu_work.txt"))
    return ("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            "From: Kernel Dev <kd@fork.invalid>\nDate: Tue, 28 Apr 2026 10:00:00 +0200\n"
            "Subject: [PATCH] tools: more work\n\nPlanted regression for the nightly test.\n---\n"
            "diff --git a/tools/vpatch_cpu_work.txt b/tools/vpatch_cpu_work.txt\n" + diff + "\n")
