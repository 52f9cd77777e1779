"""vpatch drift --from A --to B over a history of 1,200 commits made with git fast-import."""
from __future__ import annotations

import sys
import time

import pytest

from conftest import REPO_ROOT, SeriesDir, git, lines, make_patch

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from bench_drift import make_history  # noqa: E402

from vpatch.manager.drift import _shift  # noqa: E402


def test_shift_ranges_through_a_diff():
    # insertion of 2 lines after line 3 moves a range at 10-14; a change at 12 touches it
    assert _shift([[10, 14]], [(3, 0, 4, 2)]) == ([[12, 16]], [])
    assert _shift([[10, 14]], [(12, 1, 12, 1)]) == ([[10, 14]], [0])
    assert _shift([[10, 14]], [(20, 2, 20, 0)]) == ([[10, 14]], [])
    assert _shift([[10, 14]], [(1, 3, 1, 1)]) == ([[8, 12]], [])


@pytest.fixture
def history(tmp_path, upstream):
    up = upstream
    for i in range(20):
        up.write(f"src/p{i}.py", lines(50, f"p{i}"))
    up.write("src/a.py", lines(60, "a"))
    up.commit("pool", tag="v2.0.0")
    a, b = lines(60, "a"), lines(30, "b")
    s = SeriesDir(up.path.parent / "fork", "v2.0.0", str(up.path))
    s.add_patch("ea", make_patch(up, {"src/a.py": a.replace("a 40\n", "a 40 fast\n")}, "a fast"))
    s.add_patch("eb", make_patch(up, {"src/b.py": b.replace("b 10\n", "b 10 faster\n")}, "b faster"))
    s.add_patch("readme", make_patch(up, {"README": "fixed\n"}, "readme"))
    events = {
        100: ("src/a.py", lambda t: "# header\n" * 5 + t, "a: header (far from the hunk)"),
        300: ("src/a.py", lambda t: t.replace("a 38\n", "a 38 ctx\n"), "a: touch the context of ea"),
        700: ("src/a.py", lambda t: t.replace("a 40\n", "a 40 theirs\n"), "a: rewrite ea's line"),
        500: ("README", lambda t: "fixed\n", "take the readme fix"),
        900: ("src/b.py", lambda t: t.replace("b 2\n", "b 2 far\n"), "b: far away"),
    }
    pool = [f"src/p{i}.py" for i in range(20)]
    t = time.perf_counter()
    shas = make_history(up.path, "v2.0.0", 1200, seed=7, pool=pool, events=events, ref="refs/heads/main")
    made = time.perf_counter() - t
    git(up.path, "tag", "v2.1.0", shas[-1])
    return s, shas, made


def test_drift_finds_the_breaking_commits(history, vp):
    s, shas, made = history
    assert len(shas) == 1200 and made < 30
    r = vp(s.root, "--json", "drift", "--from", "v2.0.0", "--to", "v2.1.0")
    assert r.rc == 0, r.err
    d = r.json
    assert d["commits"] == 1200
    e = {x["id"]: x for x in d["entries"]}
    ea = e["ea"]
    assert ea["breaks_at"]["commit"] == shas[300] and ea["breaks_at"]["status"] == "3-way"
    assert ea["conflicts_at"]["commit"] == shas[700] and ea["conflicts_at"]["status"] == "conflict"
    assert ea["at_to"] == "conflict"
    assert [x["commit"] for x in ea["touched_files"]] == [shas[100], shas[300], shas[700]]
    assert [x["commit"] for x in ea["touched_hunks"]] == [shas[300], shas[700]]
    rd = e["readme"]
    assert rd["breaks_at"]["commit"] == shas[500] and rd["breaks_at"]["status"] == "already-upstream"
    assert rd["breaks_at"]["how"] == "patch-id" and rd["conflicts_at"] is None
    eb = e["eb"]
    assert eb["breaks_at"] is None and eb["at_to"] == "clean"
    assert [x["commit"] for x in eb["touched_files"]] == [shas[900]] and eb["touched_hunks"] == []
    # binary search: few checks for 1,200 commits
    assert d["touch_points"] == 5 and d["checks_run"] <= 6
    # exhaustive agrees, and lists transitions
    x = vp(s.root, "--json", "drift", "--from", "v2.0.0", "--to", "v2.1.0", "--exhaustive").json
    ex = {y["id"]: y for y in x["entries"]}
    for k in ("ea", "eb", "readme"):
        assert ex[k]["breaks_at"] == e[k]["breaks_at"] and ex[k]["conflicts_at"] == e[k]["conflicts_at"]
    assert [(t["from"], t["to"]) for t in ex["ea"]["transitions"]] == [("clean", "3-way"), ("3-way", "conflict")]
    # the human table
    h = vp(s.root, "drift", "--from", "v2.0.0", "--to", "v2.1.0")
    assert h.rc == 0 and "1200 upstream commits" in h.out


def test_drift_scan_every_commit_matches_cold_checks(history):
    """The memoised scan gives, at every commit, what a from-scratch index-only check gives."""
    from vpatch.manager.drift import Scan
    from vpatch.manager.git import Git
    from vpatch.manager.series import load_series

    s, shas, _ = history
    g = Git(s.root.parent / "upstream")
    series = load_series(s.series)
    warm = Scan(g, series, "v2.0.0", "v2.1.0")
    cold = Scan(g, series, "v2.0.0", "v2.1.0", memo=False)
    try:
        for i in list(range(0, 1200, 37)) + [99, 100, 299, 300, 499, 500, 699, 700, 1199]:
            assert [(r.id, r.status) for r in warm.results_at(i)] == [(r.id, r.status) for r in cold.results_at(i)], i
    finally:
        warm.close()
        cold.close()


def test_drift_refuses_unrelated_range(history, vp):
    s, shas, _ = history
    r = vp(s.root, "--json", "drift", "--from", "v2.1.0", "--to", "v2.0.0")
    assert r.rc == 2 and "not an ancestor" in r.json["error"]
