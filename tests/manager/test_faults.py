"""Bad state files, stale git locks and bad input: one line naming the file and the way out, never exit 70."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import SeriesDir, git, lines, make_patch


def ws_of(s: SeriesDir):
    return s.root / ".vpatch" / "vllm"


def one_line_error(r) -> bool:
    """exit 1, `error:` + `hint:` lines, no traceback, not the internal-error path."""
    text = (r.err + r.out).strip()
    return r.rc == 1 and (text.startswith("error:") or ": error: " in text.splitlines()[0]) and "Traceback" not in text \
        and "internal error" not in text


BAD_JSON = ["{garbage", '{"op": ', "[1, 2]", '"text"', "", b"\xff\xfe".decode("latin-1"), '{"op": 3}']


@pytest.mark.parametrize("content", BAD_JSON)
def test_damaged_operation_state(three_entries, vp, content):
    s = three_entries
    assert vp(s.root, "apply", "--upto", "one").rc == 0
    ws = ws_of(s)
    head = git(ws, "rev-parse", "HEAD")
    op = ws / ".git" / "vpatch" / "operation.json"
    op.write_bytes(content.encode("latin-1"))
    for verb in ("status", "abort", "apply", "continue", "skip"):
        r = vp(s.root, verb)
        assert one_line_error(r), (verb, r.rc, r.err)
        assert "operation.json" in r.err and "abort --force" in r.err, r.err
    r = vp(s.root, "--json", "status")
    assert r.rc == 1 and "operation.json" in r.json["error"]
    r = vp(s.root, "abort", "--force")
    assert r.rc == 0, r.err
    assert not op.exists() and git(ws, "rev-parse", "HEAD") == head
    assert vp(s.root, "apply").rc == 0


@pytest.mark.parametrize("name,content,way_out", [
    ("workspace.json", "{bad", "delete"), ("workspace.json", "[1]", "delete"),
    ("workspace.json", '{"branches": {"vpatch/v1.0.0": 3}}', "delete"),
    ("skipped.json", '{"vpatch/v1.0.0": [1]}', "delete"),
])
def test_damaged_workspace_records(three_entries, vp, name, content, way_out):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    f = ws_of(s) / ".git" / "vpatch" / name
    f.write_text(content)
    for verb in ("status", "apply"):
        r = vp(s.root, verb)
        assert one_line_error(r) and name in r.err and way_out in r.err, (verb, r.err)
    assert not (ws_of(s) / ".git" / "vpatch" / "operation.json").exists()  # refused before changing anything
    f.unlink()
    assert vp(s.root, "apply").rc == 0


@pytest.mark.parametrize("content", ["garbage", '{"args": ', "[1, 2]", '{"args": 3}', '{"args": {}, "log": 5}'])
def test_damaged_bisect_state(three_entries, vp, content):
    s = three_entries
    st = s.root / ".vpatch" / "bisect" / "state.json"
    st.parent.mkdir(parents=True)
    st.write_text(content)
    for args in (["bisect"], ["bisect", "status"], ["bisect", "log"]):
        r = vp(s.root, *args)
        assert one_line_error(r) and "state.json" in r.err and "bisect reset" in r.err, (args, r.err)
        r = vp(s.root, "--json", *args)
        assert r.rc == 1 and "bisect reset" in r.json["hint"]
    assert vp(s.root, "bisect", "reset").rc == 0 and not st.exists()


def test_damaged_build_record_is_named(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    rec = s.root / ".vpatch" / "builds" / "records" / "abc.json"
    rec.parent.mkdir(parents=True)
    rec.write_text('{"id": "abc"')
    r = vp(s.root, "status")
    assert one_line_error(r) and "abc.json" in r.err and "delete" in r.err


def test_state_files_are_versioned(three_entries, vp):
    import json
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    for name in ("workspace.json", "skipped.json"):
        assert json.loads((ws_of(s) / ".git" / "vpatch" / name).read_text())["version"] == 1
    op = ws_of(s) / ".git" / "vpatch" / "operation.json"
    op.write_text(json.dumps({"version": 99, "op": "apply"}))
    r = vp(s.root, "status")
    assert one_line_error(r) and "newer vpatch" in r.err


def test_stale_index_lock_is_reported_then_removed(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply", "--upto", "one").rc == 0
    lock = ws_of(s) / ".git" / "index.lock"
    lock.write_text("")
    st = vp(s.root, "--json", "status").json
    assert st["git_locks"] == [{"path": str(lock), "stale": True,
                                "why": "no process holds it open and no git runs in this repository"}]
    r = vp(s.root, "apply")
    assert r.rc == 0 and "removed a stale git lock .git/index.lock" in r.err + r.out and not lock.exists()


def test_live_index_lock_is_left_alone(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply", "--upto", "one").rc == 0
    lock = ws_of(s) / ".git" / "index.lock"
    lock.write_text("")
    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1]); print('open', flush=True); "
                               "time.sleep(60)", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        st = vp(s.root, "--json", "status").json
        assert st["git_locks"][0]["stale"] is False and str(holder.pid) in st["git_locks"][0]["why"]
        r = vp(s.root, "apply")
        assert one_line_error(r) and "in use" in r.err and str(holder.pid) in r.err
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()


def test_abort_recovers_from_a_killed_git_by_itself(tmp_path, upstream, vp):
    """The failure of the issue: a git killed with vpatch leaves index.lock; abort removes it and says so."""
    p1 = make_patch(upstream, {"src/a.py": lines(30, "a").replace("a 5\n", "a 5 fork\n")}, "fork a5")
    upstream.write("src/a.py", lines(30, "a").replace("a 5\n", "a 5 upstream\n"))
    upstream.commit("upstream a5", tag="v1.1.0")
    s = SeriesDir(tmp_path / "fork", "v1.1.0", str(upstream.path))
    s.add_patch("a5", p1)
    ws = ws_of(s)
    ws.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", str(upstream.path), str(ws))
    git(ws, "checkout", "-q", "-b", "mine", "v1.0.0")
    before = (git(ws, "rev-parse", "HEAD"), git(ws, "symbolic-ref", "HEAD"))
    assert vp(s.root, "apply").rc == 2
    (ws / ".git" / "index.lock").write_text("")
    r = vp(s.root, "abort")
    assert r.rc == 0, r.err
    assert "removed a stale git lock .git/index.lock" in r.out + r.err
    assert (git(ws, "rev-parse", "HEAD"), git(ws, "symbolic-ref", "HEAD")) == before
    assert git(ws, "status", "--porcelain") == ""


def test_series_not_utf8_or_a_directory(three_entries, vp):
    s = three_entries
    r = vp(s.root, "--series", str(s.root / "patches"), "lint")
    assert one_line_error(r) and "is a directory" in r.err + r.out
    s.series.write_bytes(s.series.read_bytes().replace(b'name = "test"', b'name = "t\xffst"'))
    for verb in ("lint", "status", "apply"):
        r = vp(s.root, verb)
        assert one_line_error(r) and "series.toml:2" in r.err + r.out and "not UTF-8" in r.err + r.out, (verb, r.err)


@pytest.mark.parametrize("claim,word", [("before = nan", "nan"), ("after = inf", "inf"), ("before = -3.0", "-3.0"),
                                        ("change_pct = -inf", "-inf"), ('before = "15.2"', "valid number")])
def test_claims_must_be_measurements(three_entries, vp, claim, word):
    s = three_entries
    s.series.write_text(s.series.read_text() + f'\n[[entry.claims]]\nmetric = "tpot"\n{claim}\n')
    for verb in ("lint", "apply"):
        r = vp(s.root, verb)
        assert one_line_error(r) and "[entry two]" in r.err + r.out and word in r.err + r.out, (verb, r.err)


def _edit_patch(s: SeriesDir, eid: str, fn) -> None:
    p = s.root / "patches" / f"{eid}.patch"
    p.write_text(fn(p.read_text()))


@pytest.mark.parametrize("edit,what", [
    (lambda t: t.replace("@@ -2,7 +2,7 @@", "@@ -2,9 +2,7 @@"), "truncated"),
    # more new lines counted than the hunk holds: the signature line "-- " is not a removed line
    (lambda t: t.replace("@@ -2,7 +2,7 @@", "@@ -2,7 +2,9 @@"), "2 new lines missing"),
    (lambda t: t.replace("@@ -2,7 +2,7 @@", "@@ -2,5 +2,5 @@"), "more lines than its header counts"),
    (lambda t: t[: t.index(" a 7\n")], "truncated"),
    (lambda t: t.replace("+++ b/src/a.py", "+++ b/src/b.py"), "'+++' names 'src/b.py'"),
])
def test_lint_checks_hunks(three_entries, vp, edit, what):
    s = three_entries
    _edit_patch(s, "one", edit)
    r = vp(s.root, "lint")
    text = r.err + r.out
    assert one_line_error(r) and "one.patch:" in text and "[entry one]" in text and what in text, text


def test_refresh_of_an_unknown_entry(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    r = vp(s.root, "refresh", "nosuch")
    assert one_line_error(r) and "'nosuch'" in r.err and "one, ov, two" in r.err


def test_validate_arguments(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    r = vp(s.root, "validate", "--shard", "x/y")
    assert one_line_error(r) and "--shard x/y" in r.err
    r = vp(s.root, "validate", "--min-boots", "1")
    assert r.rc == 2 and "--min-boots" in r.err and "Traceback" not in r.err


def test_a_reader_that_leaves_early_does_not_stop_apply(three_entries):
    """`vpatch apply | head -1`: the pipe closes while apply still prints. apply finishes its work (no
    operation left in flight) instead of dying on the first BrokenPipeError half-way through."""
    import os
    s = three_entries
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first line: every write finds the pipe closed
    p = subprocess.run([sys.executable, "-m", "vpatch.manager.cli.main", "apply"], cwd=s.root, stdout=w, stderr=w)
    os.close(w)
    assert p.returncode == 0
    assert not (ws_of(s) / ".git" / "vpatch" / "operation.json").exists()
    assert git(ws_of(s), "log", "--format=%s", "-3").count("\n") == 2  # three entries committed
