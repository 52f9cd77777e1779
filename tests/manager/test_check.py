"""vpatch check --onto REF: every status, on small real repositories, index-only."""
from __future__ import annotations


from conftest import SeriesDir, git, lines, make_patch


def _refs_and_objects(repo):
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    count = git(repo, "count-objects", "-v")
    return refs, count, git(repo, "status", "--porcelain")


def _series(tmp_path, upstream, base="v1.0.0"):
    return SeriesDir(tmp_path / "fork", base, str(upstream.path))


def by_id(d):
    return {e["id"]: e for e in d["entries"]}


def test_each_status_index_only(tmp_path, upstream, vp):
    a, b = lines(30, "a"), lines(30, "b")
    up = upstream
    up.write("src/c.py", lines(30, "c"))
    up.write("src/gone.py", lines(10, "g"))
    up.write("src/d.py", lines(30, "d"))
    up.write("src/e.py", lines(40, "e"))
    up.commit("more files", tag="v1.0.1")
    s = _series(tmp_path, up, "v1.0.1")
    s.add_patch("clean", make_patch(up, {"src/a.py": a.replace("a 5\n", "a 5 fast\n")}, "a fast"))
    s.add_patch("threeway", make_patch(up, {"src/b.py": b.replace("b 10\n", "b 10 faster\n")}, "b faster"))
    s.add_patch("conflict", make_patch(up, {"src/c.py": lines(30, "c").replace("c 7\n", "c 7 mine\n")}, "c mine"))
    s.add_patch("reverse", make_patch(up, {"README": "fixed\n"}, "readme fix"))
    s.add_patch("pid", make_patch(up, {"src/d.py": lines(30, "d").replace("d 3\n", "d 3 same\n")}, "d same"))
    s.add_patch("noop", make_patch(up, {"src/e.py": lines(40, "e").replace("e 20\n", "e 20 x\n")}, "e x"))
    s.add_patch("obsolete", make_patch(up, {"src/gone.py": lines(10, "g").replace("g 2\n", "g 2 z\n")}, "gone"))
    s.add_patch("declared", make_patch(up, {"src/a.py": a.replace("a 25\n", "a 25 d\n")}, "decl"),
                extra='upstream = { merged = "v1.1.0" }\n')
    s.add_overlay("ov-new", {"src/kernel.cu": "// k\n"})
    s.add_overlay("ov-same", {"src/ov.txt": "same\n"})
    (s.root / "patches" / "missing.patch").unlink(missing_ok=True)
    # upstream moves to v1.1.0
    up.write("src/b.py", b.replace("b 8\n", "b 8 moved\n"))                        # context of `threeway` moves
    up.write("src/c.py", lines(30, "c").replace("c 7\n", "c 7 theirs\n"))           # `conflict`'s line changes
    up.write("README", "interim\n")                                                   # `reverse` is upstream,
    up.commit("upstream work")
    up.write("src/d.py", lines(30, "d").replace("d 3\n", "d 3 same\n"))             # `pid`: the same change...
    up.write("src/a.py", a.replace("a 28\n", "a 28 other\n"))                       # ...in a bigger commit
    up.commit("take d fix and more")
    up.write("src/d.py", lines(30, "d").replace("d 3\n", "d 3 same\n").replace("d 4\n", "d 4 later\n"))  # no reverse-apply
    up.write("src/e.py", lines(40, "e").replace("e 20\n", "e 20 x\n").replace("e 17\n", "e 17 ctx\n"))  # same line, other context
    up.write("src/ov.txt", "same\n")
    up.write("README", "fixed\n")                                                     # in two steps
    git(up.path, "rm", "-q", "src/gone.py")
    up.commit("later", tag="v1.1.0")
    before = _refs_and_objects(up.path)
    r = vp(s.root, "--json", "check", "--onto", "v1.1.0")
    assert r.rc == 1, r.err  # a conflict and an obsolete entry need a human
    d = by_id(r.json)
    assert d["clean"]["status"] == "clean"
    assert d["threeway"]["status"] == "3-way"
    assert d["conflict"]["status"] == "conflict"
    assert d["conflict"]["files"] == ["src/c.py"]
    assert d["conflict"]["conflicts"][0]["file"] == "src/c.py" and d["conflict"]["conflicts"][0]["regions"]
    assert [h["state"] for h in d["conflict"]["hunks"]] == ["fails"]
    assert (d["reverse"]["status"], d["reverse"]["how"]) == ("already-upstream", "reverse-apply")
    assert (d["pid"]["status"], d["pid"]["how"]) == ("already-upstream", "patch-id")
    assert d["pid"]["commit"] == git(up.path, "rev-parse", "v1.1.0~1")
    assert (d["noop"]["status"], d["noop"]["how"]) == ("already-upstream", "3-way-noop")
    assert d["obsolete"]["status"] == "obsolete" and "src/gone.py" in d["obsolete"]["detail"]
    assert (d["declared"]["status"], d["declared"]["how"]) == ("already-upstream", "declared")
    assert d["ov-new"]["status"] == "clean"
    assert (d["ov-same"]["status"], d["ov-same"]["how"]) == ("already-upstream", "content")
    assert r.json["summary"]["already-upstream"] == 5
    # nothing in the source repository changed: refs, objects, work tree
    assert _refs_and_objects(up.path) == before
    # human table
    h = vp(s.root, "check", "--onto", "v1.1.0")
    assert h.rc == 1 and "a human is needed" in h.out and "3-way-noop" in h.out and "src/c.py lines" in h.out


def test_exit_status_clean_and_cumulative(tmp_path, upstream, vp):
    a = lines(30, "a")
    s = _series(tmp_path, upstream)
    s.add_patch("first", make_patch(upstream, {"src/a.py": a.replace("a 5\n", "a 5 one\n")}, "one"))
    # the second entry is made on top of the first: it only applies after it (cumulative check)
    upstream.write("src/a.py", a.replace("a 5\n", "a 5 one\n"))
    upstream.commit("tmp")
    second = make_patch(upstream, {"src/a.py": a.replace("a 5\n", "a 5 one two\n")}, "two")
    git(upstream.path, "reset", "-q", "--hard", "HEAD~1")
    s.add_patch("second", second)
    upstream.write("src/b.py", lines(31, "b"))
    upstream.commit("unrelated", tag="v1.1.0")
    r = vp(s.root, "--json", "check", "--onto", "v1.1.0")
    assert r.rc == 0, r.err
    assert [e["status"] for e in r.json["entries"]] == ["clean", "clean"]
    assert r.json["exit_status"] == 0


def test_left_out_entry_and_missing_file(tmp_path, upstream, vp):
    a = lines(30, "a")
    s = _series(tmp_path, upstream)
    s.add_patch("one", make_patch(upstream, {"src/a.py": a.replace("a 5\n", "a 5 one\n")}, "one"))
    s.add_patch("gone", "x")
    (s.root / "patches" / "gone.patch").unlink()
    upstream.write("src/a.py", a.replace("a 5\n", "a 5 up\n"))
    upstream.commit("up", tag="v1.1.0")
    r = vp(s.root, "--json", "check", "--onto", "v1.1.0")
    assert r.rc == 2  # an entry could not be checked: the answer is incomplete
    d = by_id(r.json)
    assert d["one"]["status"] == "conflict" and d["gone"]["status"] == "error"
    # an unknown ref is an infrastructure error, not "a human is needed"
    r = vp(s.root, "--json", "check", "--onto", "v9.9.9")
    assert r.rc == 2 and "not found" in r.json["error"]


def test_overlay_replacing_a_file_upstream_changed(tmp_path, upstream, vp):
    s = _series(tmp_path, upstream)
    s.add_overlay("ov", {"src/b.py": lines(30, "b") + "extra\n"})
    upstream.write("src/b.py", lines(30, "b").replace("b 1\n", "b 1 upstream\n"))
    upstream.commit("up", tag="v1.1.0")
    r = vp(s.root, "--json", "check", "--onto", "v1.1.0")
    assert r.rc == 1
    e = r.json["entries"][0]
    assert e["status"] == "conflict" and "replaces whole" in e["detail"]


def test_effect_checks_applies_but_no_effect(tmp_path, upstream, vp):
    import sys

    s = _series(tmp_path, upstream)
    (upstream.path / "vllm").mkdir()
    upstream.write("vllm/mod.py", "X = 1\n")
    upstream.commit("pkg", tag="v1.0.1")
    s = _series(tmp_path / "2", upstream, "v1.0.1")
    s.add_patch("works", make_patch(upstream, {"vllm/mod.py": "X = 1\nFAST = True\n"}, "fast"),
                extra='checks = ["{python} -c \'import vllm.mod, sys; sys.exit(0 if vllm.mod.FAST else 1)\'"]\n')
    s.add_patch("lost", make_patch(upstream, {"src/a.py": lines(30, "a").replace("a 5\n", "a 5 x\n")}, "x"),
                extra='checks = ["{python} -c \'import vllm.mod, sys; sys.exit(0 if hasattr(vllm.mod, \\"Y\\") else 1)\'"]\n')
    upstream.write("README", "r2\n")
    upstream.commit("up", tag="v1.1.0")
    # no workspace yet, so no runtime and no --python: not run, and every entry with checks says so
    r = vp(s.root, "--json", "check", "--onto", "v1.1.0", "--checks")
    assert r.rc == 0 and r.json["effect_checks"].startswith("not run: no workspace runtime")
    assert {e["effect"] for e in r.json["entries"]} == {"not checked"}
    r = vp(s.root, "--json", "check", "--onto", "v1.1.0", "--checks", "--python", sys.executable)
    assert r.rc == 1, r.err
    d = by_id(r.json)
    assert d["works"]["status"] == "clean" and d["works"]["checks"][0]["result"] == "pass"
    assert d["works"]["effect"] == "confirmed"
    assert d["lost"]["status"] == "applies-but-no-effect" and d["lost"]["checks"][0]["result"] == "fail"
    h = vp(s.root, "check", "--onto", "v1.1.0", "--checks", "--python", sys.executable)
    assert h.rc == 1 and "applies-but-no-effect" in h.out and "effect missing" in h.out


def test_effect_checks_refuse_a_python_that_imports_another_vllm(tmp_path, upstream, vp):
    """--python whose `import vllm` does not find the moved tree (an installed vLLM wins) is refused."""
    import sys

    (upstream.path / "vllm").mkdir()
    upstream.write("vllm/mod.py", "X = 1\n")
    upstream.commit("pkg", tag="v1.0.1")
    s = _series(tmp_path / "2", upstream, "v1.0.1")
    s.add_patch("works", make_patch(upstream, {"vllm/mod.py": "X = 1\nFAST = True\n"}, "fast"),
                extra='checks = ["{python} -c \'import vllm.mod\'"]\n')
    other = tmp_path / "other"
    (other / "vllm").mkdir(parents=True)
    (other / "vllm" / "__init__.py").write_text("")
    (other / "sitecustomize.py").write_text(f"import sys; sys.path.insert(0, {str(other)!r})\n")
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nPYTHONPATH={other}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)
    r = vp(s.root, "--json", "check", "--onto", "v1.0.1", "--checks", "--python", str(fake))
    assert r.rc == 2, r.out + r.err
    assert "imports vllm from" in r.json["error"] and "not from the moved tree" in r.json["error"]
