"""vpatch rebase --onto REF on small real repositories: drop found-upstream entries, stop and resume at
conflicts, record resolutions in patches/.resolutions/ and replay them in a fresh clone, report."""
from __future__ import annotations

import shutil
import tomllib

from conftest import SeriesDir, git, lines, make_patch


def _fork(tmp_path, upstream, name="fork"):
    a, b, c = lines(30, "a"), lines(30, "b"), lines(30, "c")
    upstream.write("src/c.py", c)
    upstream.commit("c", tag="v1.0.1")
    s = SeriesDir(tmp_path / name, "v1.0.1", str(upstream.path))
    s.add_patch("fast-a", make_patch(upstream, {"src/a.py": a.replace("a 5\n", "a 5 fast\n")}, "a fast"))
    s.add_patch("readme", make_patch(upstream, {"README": "fixed\n"}, "readme fix"))
    s.add_patch("mine-c", make_patch(upstream, {"src/c.py": c.replace("c 7\n", "c 7 mine\n")}, "c: mine"))
    s.add_patch("fast-b", make_patch(upstream, {"src/b.py": b.replace("b 10\n", "b 10 faster\n")}, "b faster"))
    upstream.write("README", "interim\n")
    upstream.write("src/b.py", b.replace("b 8\n", "b 8 moved\n"))
    upstream.write("src/c.py", c.replace("c 7\n", "c 7 theirs\n"))
    upstream.commit("upstream work")
    upstream.write("README", "fixed\n")
    upstream.commit("readme", tag="v1.1.0")
    return s


def _toml(s):
    return tomllib.loads(s.series.read_text())


def test_rebase_conflict_continue_records_everything(tmp_path, upstream, vp):
    s = _fork(tmp_path, upstream)
    assert vp(s.root, "apply").rc == 0
    r = vp(s.root, "--json", "rebase", "--onto", "v1.1.0")
    assert r.rc == 2, r.err  # stopped at the conflict
    assert r.json["entry"] == "mine-c"
    ws = s.root / ".vpatch" / "vllm"
    assert "<<<<<<<" in (ws / "src/c.py").read_text()
    assert _toml(s)["series"]["base"] == "v1.0.1"  # nothing recorded before it completes
    (ws / "src/c.py").write_text(lines(30, "c").replace("c 7\n", "c 7 theirs and mine\n"))
    git(ws, "add", "src/c.py")
    r = vp(s.root, "--json", "continue")  # the foundation's verb finishes the rebase too
    assert r.rc == 0, r.err
    rb = r.json["rebase"]
    results = {e["id"]: e["result"] for e in rb["entries"]}
    assert results == {"fast-a": "clean", "readme": "dropped: already upstream", "mine-c": "resolved", "fast-b": "3-way"}
    t = _toml(s)
    assert t["series"]["base"] == "v1.1.0"
    assert {e["id"]: e.get("upstream") for e in t["entry"]}["readme"] == {"merged": "v1.1.0"}
    assert "c 7 theirs and mine" in (s.root / "patches" / "mine-c.patch").read_text()
    assert rb["resolutions_recorded"] and (s.root / "patches" / ".resolutions").is_dir()
    assert any(p.name.startswith("postimage") for p in (s.root / "patches" / ".resolutions").rglob("*"))
    report = (tmp_path / "fork" / ".vpatch" / "reports" / "rebase-v1.0.1-to-v1.1.0.txt").read_text()
    assert "range-diff" in report and "mine-c" in report and "dropped: already upstream" in report
    assert rb["range_diff"]
    # the moved series applies cleanly on its new base
    r = vp(s.root, "--json", "apply", "--reset")
    assert r.rc == 0 and {d["id"]: d["result"] for d in r.json["done"]} == \
        {"fast-a": "clean", "mine-c": "clean", "fast-b": "clean"}
    assert "readme" in r.json["merged"]
    assert vp(s.root, "--json", "check", "--onto", "v1.1.0").json["exit_status"] == 0


def test_resolution_replayed_in_fresh_clone(tmp_path, upstream, vp):
    s = _fork(tmp_path, upstream)
    pristine = tmp_path / "pristine"
    shutil.copytree(s.root, pristine)
    assert vp(s.root, "rebase", "--onto", "v1.1.0").rc == 2
    ws = s.root / ".vpatch" / "vllm"
    (ws / "src/c.py").write_text(lines(30, "c").replace("c 7\n", "c 7 theirs and mine\n"))
    git(ws, "add", "src/c.py")
    assert vp(s.root, "rebase", "--continue").rc == 0
    # a fresh clone: the series as it was, plus the committed resolutions; no workspace, no rr-cache
    clone = tmp_path / "clone"
    shutil.copytree(pristine, clone)
    shutil.copytree(s.root / "patches" / ".resolutions", clone / "patches" / ".resolutions")
    r = vp(clone, "--json", "rebase", "--onto", "v1.1.0")
    assert r.rc == 0, r.out + r.err
    res = {e["id"]: e["result"] for e in r.json["rebase"]["entries"]}
    assert res["mine-c"] == "resolved (recorded resolution)"
    assert r.json["rebase"]["resolutions_replayed"] == ["mine-c"]
    assert (clone / "patches" / "mine-c.patch").read_text() == (s.root / "patches" / "mine-c.patch").read_text()


def test_rebase_abort_and_skip(tmp_path, upstream, vp):
    s = _fork(tmp_path, upstream)
    assert vp(s.root, "apply").rc == 0
    ws = s.root / ".vpatch" / "vllm"
    head = git(ws, "rev-parse", "HEAD")
    before = s.snapshot()
    assert vp(s.root, "rebase", "--onto", "v1.1.0").rc == 2
    r = vp(s.root, "--json", "rebase", "--abort")
    assert r.rc == 0, r.err
    assert git(ws, "rev-parse", "HEAD") == head and git(ws, "rev-parse", "--abbrev-ref", "HEAD") == "vpatch/v1.0.1"
    assert s.snapshot() == before
    assert vp(s.root, "rebase", "--onto", "v1.1.0").rc == 2
    r = vp(s.root, "--json", "skip")
    assert r.rc == 1, r.err  # finished, but an entry was left out: a human must port or drop it
    res = {e["id"]: e["result"] for e in r.json["rebase"]["entries"]}
    assert res["mine-c"] == "skipped" and _toml(s)["series"]["base"] == "v1.1.0"
    (todo,) = r.json["rebase"]["skipped"]
    assert todo["id"] == "mine-c" and "drop it" in todo["todo"] and "vpatch refresh mine-c" in todo["todo"]
    # series.toml says, beside the entry, that its patch is still for the old base
    text = s.series.read_text()
    block = text[text.index('id = "mine-c"'):text.index('id = "fast-b"')]
    assert "# vpatch rebase v1.0.1 -> v1.1.0: skipped; its patch is still for v1.0.1" in block


def test_skip_that_finishes_a_rebase_shows_its_summary(tmp_path, upstream, vp):
    s = _fork(tmp_path, upstream)
    assert vp(s.root, "rebase", "--onto", "v1.1.0").rc == 2
    r = vp(s.root, "skip")
    assert r.rc == 1, r.err
    out = " ".join(r.out.split())
    assert "readme: dropped: already upstream" in out and "recorded in series.toml as merged in v1.1.0: readme" in out
    assert "skipped, still to do" in out and "mine-c: either drop it" in out
    assert "report (range-diff and per-entry summary)" in out


def test_rebase_onto_a_sha_says_what_it_could_not_record(tmp_path, upstream, vp):
    s = _fork(tmp_path, upstream)
    sha = git(upstream.path, "rev-parse", "v1.1.0")
    assert vp(s.root, "rebase", "--onto", sha).rc == 2
    ws = s.root / ".vpatch" / "vllm"
    (ws / "src/c.py").write_text(lines(30, "c").replace("c 7\n", "c 7 theirs and mine\n"))
    git(ws, "add", "src/c.py")
    r = vp(s.root, "continue")
    assert r.rc == 0, r.err
    out = " ".join(r.out.split())
    assert f"not recorded as merged (--onto {sha} is not a release" in out and "readme" in out
    readme = {e["id"]: e for e in _toml(s)["entry"]}["readme"]
    assert readme.get("upstream", "pending") == "pending"
    text = s.series.read_text()
    assert f"found upstream in {sha} (not a release, so not recorded as merged)" in text


def test_rebase_refuses_unrefreshed_edits(tmp_path, upstream, vp):
    s = _fork(tmp_path, upstream)
    assert vp(s.root, "apply").rc == 0
    ws = s.root / ".vpatch" / "vllm"
    (ws / "src/a.py").write_text(lines(30, "a").replace("a 5\n", "a 5 fast edited\n"))
    git(ws, "commit", "-q", "-a", "--fixup", "HEAD~2")
    git(ws, "-c", "sequence.editor=true", "rebase", "-q", "-i", "--autosquash", "refs/vpatch/base")
    r = vp(s.root, "--json", "rebase", "--onto", "v1.1.0")
    assert r.rc == 1 and "refresh" in r.json["hint"]
