"""Broken Python left by a 3-way merge is reported on its entry: apply, check (real git merges)."""
from __future__ import annotations

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
