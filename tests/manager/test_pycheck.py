"""Broken Python left by a 3-way merge is reported on its entry: apply, check (real git merges)."""
from __future__ import annotations

import json

from conftest import SeriesDir, make_patch

from vpatch.manager.pycheck import added, findings

FILLER = "".join(f"X{i} = {i}\n" for i in range(12))
BASE = '"""Module."""\nimport os\nimport sys\n\n' + FILLER + "\n\ndef root():\n    return os.getcwd() or sys.prefix\n"
# the entry, made on v1.0.0: reads the root from vllm.envs
ENTRY = BASE.replace("import sys\n", "import sys\nimport vllm.envs as envs\n").replace(
    "return os.getcwd()", "return envs.ROOT or os.getcwd()")
# upstream v1.1.0 imports envs its own way just above, so the entry's context moved: git merges both imports
UPSTREAM = BASE.replace('"""Module."""\n', '"""Module."""\nfrom vllm import envs\n').replace(
    "X11 = 11\n", "X11 = envs.ELEVEN\n")


def test_findings_are_the_ones_the_entry_added():
    merged = UPSTREAM.replace("import sys\n", "import sys\nimport vllm.envs as envs\n")
    got = added("vllm/mod.py", UPSTREAM, merged)
    assert [(f.kind, f.line) for f in got] == [("redefinition", 5)]
    assert "redefinition of unused 'envs' from line 2" in got[0].message
    assert findings("a.py", "def f(:\n") [0].kind == "syntax-error"
    assert [f.kind for f in added("a.py", "x = y\n", "x = y\nz = w\n")] == ["undefined-name"]  # y was there before


def test_duplicate_import_from_a_3way_merge_is_reported_on_its_entry(tmp_path, upstream, vp):
    upstream.write("vllm/__init__.py", "")
    upstream.write("vllm/mod.py", BASE)
    upstream.commit("vllm/mod.py", tag="v1.0.1")
    s = SeriesDir(tmp_path / "fork", "v1.0.1", str(upstream.path))
    s.add_patch("envs-root", make_patch(upstream, {"vllm/mod.py": ENTRY}, "mod: root from envs"))
    s.add_patch("quiet", make_patch(upstream, {"src/a.py": "a = 1\n"}, "a"))
    upstream.write("vllm/mod.py", UPSTREAM)
    upstream.commit("envs", tag="v1.2.0")

    c = vp(s.root, "--json", "check", "--onto", "v1.2.0")
    assert c.rc == 1, c.out + c.err
    e = {x["id"]: x for x in c.json["entries"]}
    assert e["envs-root"]["status"] == "3-way"
    assert [(f["file"], f["kind"]) for f in e["envs-root"]["pycheck"]] == [("vllm/mod.py", "redefinition")]
    assert "pycheck" not in e["quiet"]
    h = vp(s.root, "check", "--onto", "v1.2.0")
    assert h.rc == 1 and "broken Python after the merge" in h.out.replace("\n", "")

    a = vp(s.root, "--json", "apply", "--base", "v1.2.0")
    assert a.rc == 0, a.out + a.err
    done = {d["id"]: d for d in a.json["done"]}
    assert done["envs-root"]["result"] == "3-way"
    f = done["envs-root"]["pycheck"][0]
    assert (f["file"], f["kind"], f["line"]) == ("vllm/mod.py", "redefinition", 5)
    assert "redefinition of unused 'envs'" in f["message"]
    assert "pycheck" not in done["quiet"]
    a2 = vp(s.root, "apply", "--base", "v1.2.0", "--reset")
    assert "envs-root: broken Python after the merge" in a2.out.replace("\n", "")
    a3 = vp(s.root, "-q", "apply", "--base", "v1.2.0", "--reset")  # --quiet leaves out progress, not findings
    assert a3.rc == 0 and "envs-root: broken Python after the merge" in a3.out.replace("\n", "")
    assert "quiet" not in a3.out + a3.err


def test_findings_are_cached_by_text_under_the_cache_folder(tmp_path, monkeypatch):
    """The same text gives the same findings under any path, from the cache the second time (a fresh
    process reads the disk entry); a damaged entry is analysed again, never trusted."""
    import json

    from vpatch.manager import pycheck
    monkeypatch.setenv("VPATCH_CACHE", str(tmp_path))
    monkeypatch.setattr(pycheck, "_MEMO", {})
    text = "import os\nimport os\nx = undefined_thing\n"
    first = findings("a/one.py", text)
    assert [(f.file, f.kind) for f in first] == [("a/one.py", "redefinition"), ("a/one.py", "undefined-name")]
    entries = list((tmp_path / "pycheck").rglob("*.json"))
    assert len(entries) == 1
    assert json.loads(entries[0].read_text()) == [[f.line, f.kind, f.message] for f in first]
    monkeypatch.setattr(pycheck, "_MEMO", {})  # as a new process: from disk
    assert [(f.file, f.line, f.kind, f.message) for f in findings("b/two.py", text)] == \
        [("b/two.py", f.line, f.kind, f.message) for f in first]
    entries[0].write_text("[[1, ")  # torn
    monkeypatch.setattr(pycheck, "_MEMO", {})
    assert findings("a/one.py", text) == first
    assert json.loads(entries[0].read_text()) == [[f.line, f.kind, f.message] for f in first]


def test_one_cat_file_process_reads_what_later_commits_add(tmp_path):
    """apply reads every entry's Python files through one `git cat-file --batch` kept open: objects written
    after it started must be found, a missing path reads as None, and it answers like the one-shot read."""
    from conftest import git

    from vpatch.manager.git import CatFile, Git

    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("a = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    g = Git(repo)
    with CatFile(g) as reader:
        assert reader.read(["HEAD:a.py", "HEAD:nope.py"]) == [b"a = 1\n", None]
        (repo / "b.py").write_text("b = 2\n" * 5000)  # larger than a pipe buffer
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "two")
        sha = git(repo, "rev-parse", "HEAD")
        specs = [f"{sha}:b.py", f"{sha}^:b.py", f"{sha}:a.py"]
        assert reader.read(specs) == g.read_blobs_once(specs) == [b"b = 2\n" * 5000, None, b"a = 1\n"]


def test_paths_from_the_patch_are_the_ones_git_lists(tmp_path):
    """apply's fast path takes the files to check from the patch it applied instead of a diff-tree per entry:
    for added (also empty), modified, renamed, mode-changed and deleted files (format-patch with rename and copy
    detection), the patch's paths are git's, less deletions; a quoted path or a binary patch says "ask git"."""
    import os

    from conftest import git

    from vpatch.manager.entries import new_paths

    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    body = "".join(f"line {i}\n" for i in range(40))
    for name in ("b.py", "c.py", "d.py", "f.py", "g h.py", "pkg/k.py"):
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text(f"# {name}\n" + body)
    (repo / "c.py").write_text("".join(f"other {i}\n" for i in range(40)))  # unlike the rest: stays a deletion
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    (repo / "a.py").write_text("new = 1\n")
    (repo / "empty.py").write_text("")  # a new empty file: no +++ line, only the section header
    (repo / "b.py").write_text((repo / "b.py").read_text() + "more\n")
    (repo / "c.py").unlink()
    os.rename(repo / "d.py", repo / "pkg" / "e.py")
    (repo / "copy.py").write_text((repo / "pkg/k.py").read_text() + "x\n")
    os.chmod(repo / "f.py", 0o755)
    (repo / "g h.py").write_text("changed\n" + body)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "edit")
    patch = git(repo, "format-patch", "-1", "--stdout", "-M", "-C", "--find-copies-harder", "HEAD")
    assert "rename to pkg/e.py" in patch and "deleted file mode" in patch and "new file mode" in patch
    listed = git(repo, "diff-tree", "-r", "--no-commit-id", "--name-status", "--no-renames", "HEAD^", "HEAD")
    want = sorted(line.split("\t", 1)[1] for line in listed.splitlines() if not line.startswith("D"))
    assert new_paths(patch) == want == ["a.py", "b.py", "copy.py", "empty.py", "f.py", "g h.py", "pkg/e.py"]
    assert new_paths(patch.replace("+++ b/a.py", '+++ "b/a\\tb.py"')) is None
    assert new_paths("diff --git a/x.bin b/x.bin\nindex 1..2 100644\nGIT binary patch\nliteral 3\n") is None
    # a hunk line that looks like a header is content, not a path
    assert "zzz.py" not in (new_paths(patch.replace("+more\n", "++++ b/zzz.py\n")) or [])


BIG = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(3000))  # ~100 kB: past WORKER_BYTES


def test_large_files_are_checked_by_workers_and_recorded_on_their_entries(tmp_path, upstream, vp):
    """A clean patch onto a large module that uses a name upstream removed: the check runs in a worker
    process beside the apply (the text is past WORKER_BYTES) and the finding is on its entry; a run killed
    before it recorded the checks (``pycheck_pending`` in the state) checks them again when it goes on."""
    from vpatch.manager.pycheck import Background

    assert len(BIG) >= Background.WORKER_BYTES
    upstream.write("vllm/big.py", "import os\n" + BIG)
    upstream.commit("big", tag="v1.0.2")
    s = SeriesDir(tmp_path / "fork", "v1.0.2", str(upstream.path))
    s.add_patch("uses-os", make_patch(upstream, {"vllm/big.py": "import os\n" + BIG + "ROOT = os.sep\n"}, "root"))
    s.add_patch("clash", make_patch(upstream, {"src/a.py": "a = 1\n"}, "a"))
    upstream.write("vllm/big.py", "\n" + BIG)  # v1.2.1 drops the import: the entry still applies cleanly
    upstream.write("src/a.py", "a = 2\n")     # and the second entry conflicts
    upstream.commit("no os", tag="v1.2.1")
    env = {"VPATCH_CACHE": str(tmp_path / "cache")}

    a = vp(s.root, "--json", "apply", "--base", "v1.2.1", env=env)
    assert a.rc != 0 and "clash" in a.err + a.out  # stopped at the conflict, the first entry's check recorded
    ws = s.root / ".vpatch" / "vllm"
    op_file = ws / ".git" / "vpatch" / "operation.json"
    op = json.loads(op_file.read_text())
    done = {d["id"]: d for d in op["done"]}
    assert done["uses-os"]["result"] == "clean"
    assert [(f["file"], f["kind"]) for f in done["uses-os"]["pycheck"]] == [("vllm/big.py", "undefined-name")]
    assert op["pycheck_pending"] == []

    # as if killed after the commit and before the check was recorded
    del done["uses-os"]["pycheck"]
    op["pycheck_pending"] = ["uses-os"]
    op_file.write_text(json.dumps(op))
    k = vp(s.root, "--json", "skip", env=env)
    assert k.rc == 0, k.err
    rec = {d["id"]: d for d in k.json["done"]}["uses-os"]
    assert [(f["file"], f["kind"], f["message"]) for f in rec["pycheck"]] == [
        ("vllm/big.py", "undefined-name", "undefined name 'os'")]


def test_workers_end_when_vpatch_is_killed(tmp_path):
    """A kill -9 of vpatch while its pycheck workers live: the workspace lock is free at once (a forked worker
    must not keep the flock it inherited) and the workers end by themselves within seconds."""
    import fcntl
    import os
    import subprocess
    import sys
    import time

    lock = tmp_path / "lock"
    script = f"""
import fcntl, os, signal, subprocess
from vpatch.manager.git import Git
from vpatch.manager.pycheck import Background
subprocess.run(["git", "init", "-q", {str(tmp_path)!r}], check=True)
fd = os.open({str(lock)!r}, os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
b = Background(Git({str(tmp_path)!r}))
print(" ".join(str(w.pid) for w in b._workers), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "VPATCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == -9, r.stderr
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 2
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while a worker holds it
    finally:
        os.close(fd)
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split()[2]]
    assert not alive, f"workers {alive} outlived vpatch"


def test_forked_workers_answer_the_texts_they_are_sent(tmp_path):
    """In a process without other threads the texts go to two forked workers: each answer is the
    finding pyflakes gives for the commit (the cache file written by the worker), answers come back per
    entry whatever the order asked, and closing reaps the workers."""
    import os
    import subprocess
    import sys

    script = f"""
import json, os, subprocess
from vpatch.manager.git import Git
from vpatch.manager.pycheck import Background
repo = {str(tmp_path / "repo")!r}
def git(*a):
    return subprocess.run(["git", "-C", repo, *a], check=True, capture_output=True, text=True).stdout.strip()
subprocess.run(["git", "init", "-q", repo], check=True)
git("config", "user.name", "t"); git("config", "user.email", "t@x.invalid")
git("commit", "-q", "--allow-empty", "-m", "root")
big = "".join(f"def f{{i}}(x):\\n    return x + {{i}}\\n\\n\\n" for i in range(400))  # ~12 kB each
shas = []
for n in range(4):
    with open(os.path.join(repo, f"m{{n}}.py"), "w") as f:
        f.write(big + f"ROOT{{n}} = missing{{n}}\\n")
    git("add", "-A"); git("commit", "-q", "-m", f"c{{n}}")
    shas.append(git("rev-parse", "HEAD"))
b = Background(Git(repo))
pids = [w.pid for w in b._workers]
for n, sha in enumerate(shas):
    b.submit(f"e{{n}}", sha)
sent = sorted(e for e, (_, job) in b._jobs.items() if not isinstance(job, list))
got = {{e: b.result(e) for e in ["e3", "e1", "e0", "e2"]}}
b.close()
reaped = [p for p in pids if not os.path.exists(f"/proc/{{p}}")]
print(json.dumps({{"pids": pids, "sent": sent, "got": got, "reaped": reaped}}))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "VPATCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    if (os.cpu_count() or 1) < 2:
        assert out["pids"] == [] and out["sent"] == []
        return
    assert len(out["pids"]) == 2 and out["sent"] == ["e0", "e1", "e2", "e3"]
    for n in range(4):
        assert [(f["file"], f["kind"], f["message"]) for f in out["got"][f"e{n}"]] == [
            (f"m{n}.py", "undefined-name", f"undefined name 'missing{n}'")]
    assert out["reaped"] == out["pids"]
    assert len(list((tmp_path / "cache" / "pycheck").rglob("*.json"))) == 4  # written by the workers


def test_a_worker_that_does_not_end_is_killed_when_vpatch_closes(tmp_path):
    """A worker that never ends (hung in an analysis) must not keep vpatch from finishing: close waits its
    grace, then kills it, and nothing of it is left."""
    import os
    import signal
    import subprocess
    import sys

    script = f"""
import json, os, subprocess, time
from vpatch.manager import pycheck
from vpatch.manager.git import Git
subprocess.run(["git", "init", "-q", {str(tmp_path)!r}], check=True)
pycheck._serve = lambda jobs, results: time.sleep(3600)  # the forked worker runs this: it never ends
pycheck._Worker.GRACE = 0.5
b = pycheck.Background(Git({str(tmp_path)!r}))
pids = [w.pid for w in b._workers]
t = time.monotonic()
b.close()
print(json.dumps({{"pids": pids, "s": time.monotonic() - t, "left": [p for p in pids if os.path.exists(f"/proc/{{p}}")]}}))
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "VPATCH_CACHE": str(tmp_path / "cache")}, start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the workers too: they hold the pipes
        p.communicate()
        raise AssertionError("close() did not return within 60 s: it waits for a worker that never ends") from None
    assert p.returncode == 0, stderr
    out = json.loads(stdout)
    if (os.cpu_count() or 1) < 2:
        assert out["pids"] == []
        return
    assert len(out["pids"]) == 2 and out["left"] == [], out
    assert 0.5 <= out["s"] < 5, out  # one grace for both workers, not one each after the other
