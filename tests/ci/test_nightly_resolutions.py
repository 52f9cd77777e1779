"""The nightly replays conflict resolutions recorded in patches/.resolutions/: a night whose only conflicts
are covered rebases and validates instead of stopping at "drift" (real git rerere, a real CPU workload)."""
from __future__ import annotations

import shutil
import sys

from conftest import SeriesDir, git, lines, make_patch
from workloads import workload_project

from vpatch.ci.nightly import only_conflicts


def test_only_conflicts_is_pure():
    assert only_conflicts({"entries": [{"status": "clean"}, {"status": "conflict"}]})
    assert not only_conflicts({"entries": [{"status": "conflict"}, {"status": "obsolete"}]})
    assert not only_conflicts({"entries": [{"status": "clean", "effect": "missing"}, {"status": "conflict"}]})
    assert not only_conflicts({"entries": [{"status": "3-way", "pycheck": [{"kind": "redefinition"}]}]})
    assert not only_conflicts({"entries": [{"status": "clean"}]})


def _project(tmp_path):
    up = workload_project(tmp_path / "project", {"src/c.py": lines(30, "c")})
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(up.path))
    s.add_patch("mine-c", make_patch(up, {"src/c.py": lines(30, "c").replace("c 7\n", "c 7 mine\n")}, "c: mine"))
    s.add_patch("readme", make_patch(up, {"README": "fork\n"}, "readme"))
    (s.root / "vpatch.toml").write_text(
        "[nightly]\nmetrics = [\"cpu_ms\"]\nthreshold_pct = 3.0\n"
        "[validate]\nboots_min = 3\nboots_max = 3\n"
        f"[measure.metrics.cpu_ms]\ncommand = \"{sys.executable} {{tree}}/bench.py\"\nunit = \"ms\"\nruns_per_boot = 1\n")
    up.write("src/c.py", lines(30, "c").replace("c 7\n", "c 7 theirs\n"))
    up.commit("upstream changes c 7", tag="v1.1.0")
    return up, s


def test_nightly_replays_recorded_resolutions(tmp_path, vp):
    up, s = _project(tmp_path)
    bare = tmp_path / "bare"
    shutil.copytree(s.root, bare)
    # a teammate resolved this conflict once, in their own clone, and committed patches/.resolutions/
    mate = tmp_path / "mate"
    shutil.copytree(s.root, mate)
    assert vp(mate, "rebase", "--onto", "v1.1.0").rc == 2
    ws = mate / ".vpatch" / "vllm"
    (ws / "src/c.py").write_text(lines(30, "c").replace("c 7\n", "c 7 theirs and mine\n"))
    git(ws, "add", "src/c.py")
    assert vp(mate, "continue").rc == 0
    shutil.copytree(mate / "patches" / ".resolutions", s.root / "patches" / ".resolutions")

    r = vp(s.root, "--json", "nightly", "--upstream", "v1.1.0", timeout=1200)
    assert r.rc == 0, r.err + r.out[-3000:]
    n = r.json
    assert n["status"] == "clean"
    assert [st["name"] for st in n["stages"]][:4] == ["check", "rebase", "status", "validate"]
    assert n["stages"][0]["rc"] == 1  # the check alone sees a conflict
    assert n["rebase"]["rebase"]["resolutions_replayed"] == ["mine-c"]
    assert {e["id"]: e["status"] for e in n["check"]["entries"]}["mine-c"] == "resolved"
    assert n["validate"]["cpu_ms"] and 'base = "v1.1.0"' in s.series.read_text()
    assert "c 7 theirs and mine" in (s.root / "patches" / "mine-c.patch").read_text()

    # without the recorded resolution the same night stops at drift, and the series stays where it was
    r = vp(bare, "--json", "nightly", "--upstream", "v1.1.0", timeout=1200)
    assert r.rc == 10, r.err + r.out[-3000:]
    assert r.json["status"] == "drift" and [st["name"] for st in r.json["stages"]][:3] == ["check", "rebase", "abort"]
    assert 'base = "v1.0.0"' in (bare / "patches" / "series.toml").read_text()
