"""The in-process apply (manager/treepatch.py) against git itself, on a real repository: wherever it gives an
answer, the tree is the one `git apply --cached` + `write-tree` gives and the commit the one `commit-tree`
gives; where git would search for an offset or rewrite something, it gives none; and `vpatch apply` makes
the same commits with it as with `git apply` (VPATCH_GIT_APPLY=1), spawning no `git apply` for a plain
series."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import SeriesDir, Upstream, git, lines, make_patch

from vpatch.manager import treepatch as tp
from vpatch.manager.entries import cleanup_message, identity_env
from vpatch.manager.git import CatFile, Git, ObjectStore

CRLF = "".join(f"crlf {i}\r\n" for i in range(1, 12))


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    files = {"src/a.py": lines(40, "a"), "src/b.py": lines(12, "b"), "tool.sh": "#!/bin/sh\necho 1\necho 2\n",
             "crlf.txt": CRLF, "nonl.txt": "x 1\nx 2\nx 3", "dir/only.txt": "only\n", "keep/x.txt": lines(5, "x"),
             "src/sub": None}
    for rel, text in files.items():
        if text is None:
            continue
        (r / rel).parent.mkdir(parents=True, exist_ok=True)
        (r / rel).write_bytes(text.encode())
    os.chmod(r / "tool.sh", 0o755)
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "base")
    return r


def diff_of(repo: Path, edit) -> str:
    """The `git diff` of ``edit(worktree)`` made on HEAD; the work tree is put back afterwards."""
    edit(repo)
    git(repo, "add", "-A")
    d = subprocess.run(["git", "diff", "--cached", "--full-index", "HEAD"], cwd=repo, capture_output=True,
                       check=True).stdout.decode()  # bytes: text mode would turn CRLF into LF
    git(repo, "reset", "-q", "--hard", "HEAD")
    git(repo, "clean", "-qfd")
    return d


def with_git(repo: Path, diff: str, tmp: Path) -> str | None:
    """The tree `git apply --cached` + `write-tree` make of HEAD and ``diff``; None where git refuses."""
    env = {**os.environ, "GIT_INDEX_FILE": str(tmp / "idx")}
    subprocess.run(["git", "read-tree", "HEAD"], cwd=repo, env=env, check=True)
    r = subprocess.run(["git", "apply", "--cached", "--whitespace=nowarn", "-"], cwd=repo, env=env,
                       input=diff.encode(), capture_output=True)
    if r.returncode != 0:
        return None
    return subprocess.run(["git", "write-tree"], cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def in_process(repo: Path, diff: str) -> str | None:
    """The same through treepatch (what IndexOnly calls)."""
    g = Git(repo)
    with CatFile(g) as reader:
        files = tp.parse(diff.encode())
        return None if files is None else tp.apply_diff(ObjectStore(g, reader), g.tree_of("HEAD"), files)


def edit(rel: str, fn):
    def go(repo: Path):
        p = repo / rel
        p.write_bytes(fn(p.read_bytes()))
    return go


def replace_line(old: str, new: str):
    return lambda b: b.replace(old.encode(), new.encode(), 1)


def new_file(rel: str, text: str, mode: int = 0o644):
    def go(repo: Path):
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.chmod(p, mode)
    return go


def many(*edits):
    def go(repo: Path):
        for e in edits:
            e(repo)
    return go


PLAIN = {
    "middle": edit("src/a.py", replace_line("a 20\n", "a 20 fast\n")),
    "first line": edit("src/a.py", replace_line("a 1\n", "a 1 first\n")),
    "append at the end": edit("src/a.py", lambda b: b + b"a 41\na 42\n"),
    "insert before the first line": edit("src/b.py", lambda b: b"# header\n" + b),
    "two hunks": edit("src/a.py", lambda b: b.replace(b"a 3\n", b"a 3!\n").replace(b"a 35\n", b"")),
    "executable file keeps its mode": edit("tool.sh", replace_line("echo 1\n", "echo one\n")),
    "CRLF lines": edit("crlf.txt", replace_line("crlf 6\r\n", "crlf six\r\n")),
    "new file in a new directory": new_file("new/deep/f.py", "print(1)\n"),
    "new executable file": new_file("bin/run.sh", "#!/bin/sh\n", 0o755),
    "delete the only file of a directory": lambda r: (r / "dir/only.txt").unlink(),
    "delete a file": lambda r: (r / "keep/x.txt").unlink(),
    "several files": many(edit("src/a.py", replace_line("a 9\n", "a nine\n")), new_file("src/c.py", "c\n"),
                          lambda r: (r / "dir/only.txt").unlink(), edit("crlf.txt", lambda b: b + b"end\r\n")),
    "a new directory sorts as name/ (src/a/ after src/a.py)": new_file("src/a/x.py", "x\n"),
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_patch_gives_gits_tree(repo, tmp_path, name):
    diff = diff_of(repo, PLAIN[name])
    want = with_git(repo, diff, tmp_path)
    assert want is not None, "git itself applies it"
    assert in_process(repo, diff) == want


def _offset_diff(repo: Path) -> str:
    """A patch made where src/a.py had three more lines at the top: git applies it at an offset."""
    (repo / "src/a.py").write_text("x\ny\nz\n" + lines(40, "a"))
    git(repo, "commit", "-qam", "tmp")
    d = diff_of(repo, edit("src/a.py", replace_line("a 20\n", "a 20 fast\n")))
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    return d


NOT_PLAIN = {
    # each: git does it, or refuses; either way the in-process apply leaves it to git
    "an offset": _offset_diff,
    "no newline at the end": lambda r: diff_of(r, edit("nonl.txt", replace_line("x 3", "x three"))),
    "a mode change": lambda r: diff_of(r, lambda w: os.chmod(w / "src/b.py", 0o755)),
    "a rename": lambda r: diff_of(r, lambda w: (w / "keep/x.txt").rename(w / "keep/y.txt")),
    "a file that is not there": lambda r: diff_of(r, edit("src/a.py", replace_line("a 5\n", "a 5!\n"))).replace(
        "src/a.py", "src/zz.py"),
    "a new file that is there": lambda r: diff_of(r, new_file("src/new.py", "n\n")).replace("src/new.py",
                                                                                            "src/b.py"),
    "a file where a directory is": lambda r: diff_of(r, new_file("srcx", "n\n")).replace("srcx", "src"),
    "context that does not match": lambda r: diff_of(r, edit("src/a.py", replace_line("a 20\n", "a 20!\n"))
                                                     ).replace(" a 18\n", " a 18 (changed)\n"),
    "a -U0 hunk in the middle": lambda r: _u0(r),
}


def _u0(repo: Path) -> str:
    edit("src/a.py", replace_line("a 20\n", "a 20 fast\n"))(repo)
    d = git(repo, "diff", "-U0") + "\n"
    git(repo, "checkout", "-q", "--", ".")
    return d


@pytest.mark.parametrize("name", list(NOT_PLAIN))
def test_what_is_not_plain_is_left_to_git(repo, tmp_path, name):
    diff = NOT_PLAIN[name](repo)
    got = in_process(repo, diff)
    want = with_git(repo, diff, tmp_path)
    assert got is None or got == want
    if name in ("an offset", "no newline at the end", "a mode change", "a rename"):
        assert want is not None and got is None  # git applies these; only git may


@pytest.mark.parametrize("date", ["Tue, 28 Apr 2026 10:00:00 +0200", "Thu, 1 Jan 1970 00:00:00 +0000",
                                  "Wed, 3 Dec 2026 23:59:59 -0530", "4 Dec 2026 05:04:39 +1245"])
def test_commit_object_is_commit_trees(repo, date):
    g = Git(repo)
    tree, parent = g.tree_of("HEAD"), g.head()
    message = cleanup_message("subj: ünïcode\n\n\nbody  \n\nVpatch-Entry: x\n")
    env = identity_env("Kernel Dev", "kd@fork.invalid", date)
    want = git(repo, "commit-tree", tree, "-p", parent, input=message, env=env)
    stamp = tp.git_date(date)
    assert stamp is not None
    data = tp.commit_object(tree, parent, "Kernel Dev", "kd@fork.invalid", stamp, message)
    assert tp.object_id("commit", data) == want


@pytest.mark.parametrize("bad", ["", "2026-04-28T10:00:00+02:00", "Tue, 28 Foo 2026 10:00:00 +0200",
                                 "Tue, 28 Apr 2026 10:00 +0200", "Tue, 28 Apr 2026 10:00:00 GMT"])
def test_dates_git_would_parse_another_way_are_left_to_git(bad):
    assert tp.git_date(bad) is None


@pytest.mark.parametrize("ident,plain", [("Kernel Dev", True), ("kd@fork.invalid", True), (" lead", False),
                                         ("trail.", False), ("a <b>", False), ("", False), ("Ünï Cödé", True)])
def test_identities_git_would_trim_are_left_to_git(ident, plain):
    assert tp.plain_ident(ident) is plain


def _series(tmp_path, name: str) -> SeriesDir:
    """Four stacked patches on v1.0.0: three plain ones, and one made where src/a.py had a line more."""
    up = Upstream(tmp_path / f"{name}-up")
    a = lines(30, "a")
    up.write("src/a.py", a)
    up.commit("v1", tag="v1.0.0")
    s = SeriesDir(tmp_path / name, "v1.0.0", str(up.path))
    states = [("one", {"src/a.py": a.replace("a 5\n", "a 5 fast\n")}, "a: line 5"),
              ("two", {"src/new/b.py": "b = 1\n"}, "b: a new file"),
              ("three", {"src/a.py": a.replace("a 5\n", "a 5 fast\n").replace("a 29\n", "a 29 end\n")}, "a: 29")]
    for eid, files, msg in states:
        s.add_patch(eid, make_patch(up, files, msg))
        for rel, text in files.items():
            up.write(rel, text)
        up.commit(msg)
    longer = "head\n" + states[2][1]["src/a.py"]
    up.write("src/a.py", longer)
    up.commit("a longer file")
    s.add_patch("offset", make_patch(up, {"src/a.py": longer.replace("a 15\n", "a 15 mid\n")}, "a: line 15"))
    return s


def test_apply_makes_the_same_commits_as_git_apply_and_spawns_no_git_apply(tmp_path, vp):
    trace = tmp_path / "trace"
    heads = {}
    for mode, env in (("in-process", {"GIT_TRACE": str(trace)}), ("git apply", {"VPATCH_GIT_APPLY": "1"})):
        s = _series(tmp_path, mode.replace(" ", "-"))
        r = vp(s.root, "--json", "apply", env={"VPATCH_CACHE": str(tmp_path / "cache"), **env})
        assert r.rc == 0, r.err
        assert [d["result"] for d in r.json["done"]] == ["clean"] * 4
        ws = s.root / ".vpatch" / "vllm"
        heads[mode] = git(ws, "rev-parse", "HEAD")
        assert git(ws, "status", "--porcelain") == ""
        assert git(ws, "fsck", "--no-dangling") == ""
    assert heads["in-process"] == heads["git apply"]
    spawned = [line.split()[5] for line in trace.read_text().splitlines() if "trace: built-in: git" in line]
    # the three plain entries go in-process; the one made on a longer file needs git's offset search
    assert spawned.count("apply") == 1 and spawned.count("commit-tree") == 1, spawned
    # each message asked of git once (four threads before the first entry), never again in the loop
    assert spawned.count("mailinfo") == 4 and spawned.count("interpret-trailers") == 4, spawned
