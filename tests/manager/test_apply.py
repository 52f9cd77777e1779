"""apply / continue / skip / abort / status on real git repositories."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from conftest import SeriesDir, git, lines, make_patch


def ws_of(s: SeriesDir):
    return s.root / ".vpatch" / "vllm"


def test_apply_one_commit_per_entry_with_trailers(three_entries, vp):
    s = three_entries
    r = vp(s.root, "--json", "apply")
    assert r.rc == 0, r.err
    d = r.json
    assert [x["id"] for x in d["done"]] == ["one", "ov", "two"]
    assert all(x["result"] == "clean" for x in d["done"])
    ws = ws_of(s)
    log = git(ws, "log", "--format=%s|%an|%(trailers:key=Vpatch-Entry,valueonly,separator=)", "refs/vpatch/base..HEAD").splitlines()
    assert log == ["b: line 10 faster|Kernel Dev|two", "ov title|vpatch|ov", "a: make line 5 fast|Kernel Dev|one"]
    assert git(ws, "rev-parse", "--abbrev-ref", "HEAD") == "vpatch/v1.0.0"
    assert "a 5 fast" in (ws / "src/a.py").read_text()
    assert (ws / "src/sub/helper.h").read_text() == "#pragma once\n"
    # the author's date is kept
    assert git(ws, "log", "-1", "--format=%aI", "HEAD~2") == "2026-04-28T10:00:00+02:00"


def test_quiet_apply_prints_no_line_per_entry(three_entries, vp):
    s = three_entries
    loud = vp(s.root, "apply")
    assert loud.rc == 0 and all(e in loud.out + loud.err for e in ("one", "ov", "two")), loud.out + loud.err
    head = git(ws_of(s), "rev-parse", "HEAD")
    quiet = vp(s.root, "-q", "apply", "--reset")
    assert quiet.rc == 0, quiet.err
    said = quiet.out + quiet.err
    assert not [e for e in ("one", "ov", "two") if re.search(rf"\b{e}\b", said)], said
    assert git(ws_of(s), "rev-parse", "HEAD") == head  # the same commits, made again


def test_reapply_keeps_commits_and_is_deterministic(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    head = git(ws_of(s), "rev-parse", "HEAD")
    r = vp(s.root, "--json", "apply")
    assert r.rc == 0 and [x["result"] for x in r.json["done"]] == ["kept"] * 3
    assert git(ws_of(s), "rev-parse", "HEAD") == head
    # --reset re-applies from the base: same commits (committer = author, dates kept), old branch backed up
    r = vp(s.root, "--json", "apply", "--reset")
    assert r.rc == 0 and r.json["backup"].startswith("refs/vpatch/backup/")
    assert git(ws_of(s), "rev-parse", "HEAD") == head


def test_messages_are_read_from_git_once(three_entries, vp, tmp_path):
    """mailinfo's and interpret-trailers' answers are kept by their input under $VPATCH_CACHE/git-text: a
    re-apply from the base spawns neither and makes the same commits; a damaged entry is asked again."""
    s = three_entries
    env = {"VPATCH_CACHE": str(tmp_path / "cache")}

    def apply(trace: str, *extra: str) -> list[str]:
        r = vp(s.root, "apply", *extra, env={**env, "GIT_TRACE": str(tmp_path / trace)})
        assert r.rc == 0, r.err
        return [line.split()[5] for line in (tmp_path / trace).read_text().splitlines() if "built-in: git" in line]

    first = apply("t1")
    head = git(ws_of(s), "rev-parse", "HEAD")
    assert first.count("mailinfo") == 2 and first.count("interpret-trailers") == 3
    again = apply("t2", "--reset")
    assert git(ws_of(s), "rev-parse", "HEAD") == head
    assert "mailinfo" not in again and "interpret-trailers" not in again
    for f in (tmp_path / "cache" / "git-text").rglob("*.json"):
        f.write_text("{not json")
    third = apply("t3", "--reset")
    assert third.count("mailinfo") == 2 and git(ws_of(s), "rev-parse", "HEAD") == head


def test_status_remembers_sync_answers_and_still_sees_an_edit(three_entries, vp, tmp_path):
    """`status` keeps each applied commit's sync answer by (commit, entry digest) in .git/vpatch: a second
    status asks git nothing about the entries (no patch-id), an amended commit is a new key and reads
    `edited`, and a damaged memo is only a cache (same answers, no error)."""
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    ws = ws_of(s)

    def status(trace: str) -> dict:
        r = vp(s.root, "--json", "status", env={"GIT_TRACE": str(tmp_path / trace)})
        assert r.rc == 0, r.err
        return {e["id"]: e["sync"] for e in r.json["entries"]}

    assert status("t1") == {"one": "in-sync", "ov": "in-sync", "two": "in-sync"}
    assert "patch-id" in (tmp_path / "t1").read_text()
    assert status("t2") == {"one": "in-sync", "ov": "in-sync", "two": "in-sync"}
    assert "patch-id" not in (tmp_path / "t2").read_text() and "mailinfo" not in (tmp_path / "t2").read_text()
    (ws / "src/b.py").write_text((ws / "src/b.py").read_text().replace("b 10 faster\n", "b 10 faster still\n"))
    git(ws, "commit", "-q", "-a", "--amend", "--no-edit")
    assert status("t3") == {"one": "in-sync", "ov": "in-sync", "two": "edited"}
    (ws / ".git/vpatch/sync-memo.json").write_text("{not json")
    assert status("t4") == {"one": "in-sync", "ov": "in-sync", "two": "edited"}


def test_upto_and_status(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply", "--upto", "ov").rc == 0
    st = vp(s.root, "--json", "status").json
    states = {e["id"]: (e["state"], e.get("sync")) for e in st["entries"]}
    assert states == {"one": ("applied", "in-sync"), "ov": ("applied", "in-sync"), "two": ("pending", None)}
    assert st["operation"] is None and st["dirty"] == []
    assert vp(s.root, "apply").rc == 0
    assert vp(s.root, "--json", "status").json["entries"][2]["state"] == "applied"


def test_merged_entry_is_skipped_with_reason(tmp_path, upstream, vp):
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(upstream.path))
    s.add_patch("old-fix", make_patch(upstream, {"README": "fixed\n"}, "readme fix"),
                extra='upstream = { merged = "v0.9.0" }\n')
    s.add_patch("later", make_patch(upstream, {"README": "fixed\n"}, "readme fix"),
                extra='upstream = { merged = "v1.2.0" }\n')
    d = vp(s.root, "--json", "apply").json
    assert "merged upstream in v0.9.0" in d["merged"]["old-fix"]
    assert [x["id"] for x in d["done"]] == ["later"]
    st = vp(s.root, "--json", "status").json
    assert st["entries"][0]["state"] == "merged"


def test_change_already_present_is_reported_not_silent(tmp_path, upstream, vp):
    patch = make_patch(upstream, {"README": "fixed\n"}, "readme fix")
    upstream.write("README", "fixed\n")
    upstream.commit("upstream took the fix", tag="v1.1.0")
    s = SeriesDir(tmp_path / "fork", "v1.1.0", str(upstream.path))
    s.add_patch("fix", patch)
    d = vp(s.root, "--json", "apply").json
    assert d["done"][0]["result"] == "already-upstream"
    assert "reverse-applies" in d["done"][0]["detail"]
    st = vp(s.root, "--json", "status").json
    assert st["entries"][0]["state"] == "skipped" and "already-upstream" in st["entries"][0]["reason"]


def test_three_way_fallback(tmp_path, upstream, vp):
    patch = make_patch(upstream, {"src/a.py": lines(30, "a").replace("a 20\n", "a 20 fast\n")}, "a20")
    # upstream inserts lines at the top: the context moves, the patch needs a 3-way merge (or fuzz)
    upstream.write("src/a.py", "".join(f"new {i}\n" for i in range(5)) + lines(30, "a").replace("a 17\n", "a 17 changed\n"))
    upstream.commit("move things", tag="v1.1.0")
    s = SeriesDir(tmp_path / "fork", "v1.1.0", str(upstream.path))
    s.add_patch("a20", patch)
    d = vp(s.root, "--json", "apply").json
    assert d["done"][0]["result"] == "3-way"
    assert "a 20 fast" in (ws_of(s) / "src/a.py").read_text()


def _conflicting(tmp_path, upstream) -> SeriesDir:
    p1 = make_patch(upstream, {"src/a.py": lines(30, "a").replace("a 5\n", "a 5 fork\n")}, "fork a5")
    p2 = make_patch(upstream, {"src/b.py": lines(30, "b").replace("b 7\n", "b 7 fork\n")}, "fork b7")
    upstream.write("src/a.py", lines(30, "a").replace("a 5\n", "a 5 upstream\n"))
    upstream.commit("upstream a5", tag="v1.1.0")
    s = SeriesDir(tmp_path / "fork", "v1.1.0", str(upstream.path))
    s.add_patch("a5", p1)
    s.add_patch("b7", p2)
    return s


def test_conflict_stops_then_continue(tmp_path, upstream, vp):
    s = _conflicting(tmp_path, upstream)
    r = vp(s.root, "apply")
    assert r.rc == 2
    assert "entry a5" in r.err and "src/a.py (lines 5)" in r.err and "vpatch continue" in r.err
    ws = ws_of(s)
    text = (ws / "src/a.py").read_text()
    assert "<<<<<<<" in text and "a 5 fork" in text and "a 5 upstream" in text
    st = vp(s.root, "--json", "status").json
    assert st["operation"]["current"]["id"] == "a5"
    assert {e["id"]: e["state"] for e in st["entries"]} == {"a5": "conflict", "b7": "pending"}
    # continue refuses while the conflict is unresolved
    r = vp(s.root, "continue")
    assert r.rc == 1 and "still in conflict: src/a.py" in r.err
    (ws / "src/a.py").write_text(lines(30, "a").replace("a 5\n", "a 5 upstream fork\n"))
    git(ws, "add", "src/a.py")
    r = vp(s.root, "--json", "continue")
    assert r.rc == 0, r.err
    assert [(x["id"], x["result"]) for x in r.json["done"]] == [("a5", "resolved"), ("b7", "clean")]
    assert "refresh" in r.json["hint"]
    assert git(ws, "log", "-1", "--format=%s", "HEAD~1") == "fork a5"
    st = vp(s.root, "--json", "status").json
    assert st["operation"] is None
    assert {e["id"]: e["sync"] for e in st["entries"]} == {"a5": "edited", "b7": "in-sync"}
    # refresh writes the resolution back; then everything is in sync
    assert vp(s.root, "refresh", "--all").rc == 0
    assert "a 5 upstream fork" in (s.root / "patches/a5.patch").read_text()
    st = vp(s.root, "--json", "status").json
    assert {e["id"]: e["sync"] for e in st["entries"]} == {"a5": "in-sync", "b7": "in-sync"}


def test_conflict_marker_left_in_staged_file_is_refused(tmp_path, upstream, vp):
    s = _conflicting(tmp_path, upstream)
    assert vp(s.root, "apply").rc == 2
    git(ws_of(s), "add", "src/a.py")
    r = vp(s.root, "continue")
    assert r.rc == 1 and "conflict markers" in r.err


def test_conflict_then_skip(tmp_path, upstream, vp):
    s = _conflicting(tmp_path, upstream)
    assert vp(s.root, "apply").rc == 2
    r = vp(s.root, "--json", "skip")
    assert r.rc == 0
    assert [(x["id"], x["result"]) for x in r.json["done"]] == [("a5", "skipped"), ("b7", "clean")]
    ws = ws_of(s)
    assert "<<<<<<<" not in (ws / "src/a.py").read_text()
    assert git(ws, "status", "--porcelain") == ""
    st = vp(s.root, "--json", "status").json
    assert st["entries"][0]["state"] == "skipped"
    # the skip is remembered: re-running apply keeps b7 and does not retry a5
    r = vp(s.root, "--json", "apply")
    assert r.rc == 0 and r.json["done"] == [{"id": "b7", "result": "kept"}]


def test_conflict_then_abort_restores_everything(tmp_path, upstream, vp):
    s = _conflicting(tmp_path, upstream)
    # a workspace already on another branch with a commit of the user's
    s0 = SeriesDir(tmp_path / "fork0", "v1.0.0", str(upstream.path))
    ws = ws_of(s)
    ws.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", str(upstream.path), str(ws))
    git(ws, "checkout", "-q", "-b", "mine", "v1.0.0")
    (ws / "mine.txt").write_text("mine\n")
    git(ws, "add", "mine.txt")
    git(ws, "commit", "-q", "-m", "my work")
    before = (git(ws, "rev-parse", "HEAD"), git(ws, "rev-parse", "--abbrev-ref", "HEAD"), git(ws, "ls-files", "-s"))
    assert vp(s.root, "apply").rc == 2
    assert git(ws, "rev-parse", "--abbrev-ref", "HEAD") == "vpatch/v1.1.0"
    r = vp(s.root, "abort")
    assert r.rc == 0, r.err
    after = (git(ws, "rev-parse", "HEAD"), git(ws, "rev-parse", "--abbrev-ref", "HEAD"), git(ws, "ls-files", "-s"))
    assert after == before
    assert git(ws, "status", "--porcelain") == ""
    assert (ws / "mine.txt").read_text() == "mine\n"
    assert git(ws, "branch", "--list", "vpatch/v1.1.0") == ""  # the branch the apply made is gone
    assert vp(s.root, "abort").rc == 1  # nothing to abort any more
    del s0


def test_dirty_workspace_refused_and_nothing_lost(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply", "--upto", "one").rc == 0
    ws = ws_of(s)
    (ws / "src/a.py").write_text("my precious edit\n")
    r = vp(s.root, "apply")
    assert r.rc == 1 and "uncommitted changes (src/a.py)" in r.err
    assert (ws / "src/a.py").read_text() == "my precious edit\n"
    r = vp(s.root, "refresh", "--all")
    assert r.rc == 1 and "uncommitted changes" in r.err


def test_diverged_branch_refused_without_reset(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    ws = ws_of(s)
    (ws / "extra.txt").write_text("x\n")
    git(ws, "add", "extra.txt")
    git(ws, "commit", "-q", "-m", "a commit of mine")
    r = vp(s.root, "apply")
    assert r.rc == 1 and "does not match the series" in r.err and "refresh" in r.err
    head = git(ws, "rev-parse", "HEAD")
    r = vp(s.root, "--json", "apply", "--reset")
    assert r.rc == 0
    assert git(ws, "rev-parse", r.json["backup"]) == head  # nothing lost


def test_kill_9_mid_apply_then_abort(tmp_path, upstream, vp):
    """A real SIGKILL in the middle of apply; abort gives back the state of before."""
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(upstream.path))
    for i in range(60):
        s.add_patch(f"e{i:02d}", make_patch(upstream, {f"gen/f{i}.txt": f"{i}\n"}, f"entry {i}"))
    ws = ws_of(s)
    assert vp(s.root, "apply", "--upto", "e00").rc == 0
    before = git(ws, "rev-parse", "HEAD")
    proc = subprocess.Popen([sys.executable, "-m", "vpatch.manager.cli.main", "apply"], cwd=s.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    op = ws / ".git" / "vpatch" / "operation.json"
    deadline = time.time() + 120
    import json
    while time.time() < deadline:
        try:
            if len(json.loads(op.read_text())["done"]) >= 5:
                break
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert op.exists(), "the operation state must survive the kill"
    st = vp(s.root, "--json", "status").json
    assert st["operation"]["op"] == "apply"
    r = vp(s.root, "abort")
    assert r.rc == 0, r.err
    assert git(ws, "rev-parse", "HEAD") == before
    assert git(ws, "status", "--porcelain") == ""
    # and the lock died with the process: a new apply runs to the end
    r = vp(s.root, "--json", "apply")
    assert r.rc == 0 and len(r.json["done"]) == 60


def _hold_flock(path):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "print('locked', flush=True); time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_lock_keeps_two_processes_apart(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply", "--upto", "one").rc == 0
    holder = _hold_flock(ws_of(s))  # the lock is an flock on the workspace folder itself
    try:
        r = vp(s.root, "apply")
        assert r.rc == 3 and "another vpatch process" in r.err and str(holder.pid) in r.err
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_taken_before_the_workspace_exists(three_entries, vp):
    """Two first `apply`s: the second is refused by the same lock the first keeps after cloning."""
    s = three_entries
    ws = ws_of(s)
    ws.mkdir(parents=True)
    holder = _hold_flock(ws)
    try:
        r = vp(s.root, "apply")
        assert r.rc == 3 and "another vpatch process" in r.err
        assert list(ws.iterdir()) == []  # the refused one wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert vp(s.root, "apply").rc == 0


def test_refused_workspace_leaves_nothing_outside(three_entries, vp, tmp_path):
    s = three_entries
    parent = tmp_path / "elsewhere"
    (parent / "notgit").mkdir(parents=True)
    (parent / "notgit" / "mine.txt").write_text("mine\n")
    r = vp(s.root, "--workspace", str(parent / "notgit"), "apply")
    assert r.rc == 1 and "neither a git checkout nor empty" in r.err
    r = vp(s.root, "--workspace", str(parent / "notgit"), "status")  # says so too, not "apply creates it"
    assert r.rc == 0 and "apply` refuses it" in r.out and "creates it" not in r.out, r.out
    assert vp(s.root, "--json", "--workspace", str(parent / "notgit"), "status").json["foreign"] is True
    assert sorted(p.name for p in parent.iterdir()) == ["notgit"]
    assert sorted(p.name for p in (parent / "notgit").iterdir()) == ["mine.txt"]
    (parent / "afile").write_text("x\n")
    for verb in ("apply", "abort", "refresh"):
        r = vp(s.root, "--workspace", str(parent / "afile"), verb, *(["--all"] if verb == "refresh" else []))
        assert r.rc == 1 and "is a file, not a directory" in r.err, (verb, r.err)
    # a new folder that comes to nothing is removed again
    r = vp(s.root, "--workspace", str(parent / "new"), "abort")
    assert r.rc == 1 and not (parent / "new").exists()
    # ... and so are the missing folders above it that the run made
    r = vp(s.root, "--workspace", str(parent / "a" / "b" / "ws"), "abort")
    assert r.rc == 1 and "no vpatch operation" in r.err and not (parent / "a").exists()
    # a parent that is a file: one line naming it, not an internal error, nothing made
    for verb in ("apply", "abort"):
        r = vp(s.root, "--workspace", str(parent / "afile" / "ws"), verb)
        assert r.rc == 1 and f"{parent / 'afile'} is a file, not a folder" in r.err, (verb, r.err)
    assert sorted(p.name for p in parent.iterdir()) == ["afile", "notgit"]


def test_hostile_overlay_path_through_symlink_refused(tmp_path, upstream, vp):
    import os as _os
    upstream.write("src/x.txt", "x\n")
    _os.symlink("/tmp", upstream.path / "escape")
    upstream.commit("a link", tag="v1.1.0")
    s = SeriesDir(tmp_path / "fork", "v1.1.0", str(upstream.path))
    s.add_overlay("evil", {"escape/pwned.txt": "pwned\n"})
    r = vp(s.root, "apply")
    assert r.rc == 1 and "link" in r.err
    assert not (tmp_path.parent / "pwned.txt").exists()
    assert not __import__("pathlib").Path("/tmp/pwned.txt").exists()
