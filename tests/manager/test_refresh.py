"""refresh / new / import / export round trips on real git repositories."""
from __future__ import annotations

from conftest import SeriesDir, git, lines, make_patch

from vpatch.manager.refresh import reorder


def ws_of(s):
    return s.root / ".vpatch" / "vllm"


def test_apply_then_refresh_changes_no_byte(three_entries, vp):
    s = three_entries
    before = s.snapshot()
    series_before = s.series.read_bytes()
    assert vp(s.root, "apply").rc == 0
    r = vp(s.root, "--json", "refresh", "--all")
    assert r.rc == 0 and r.json["unchanged"] is True
    assert s.snapshot() == before and s.series.read_bytes() == series_before


def test_refresh_keeps_foreign_formatting_when_content_is_equal(tmp_path, upstream, vp):
    """A patch made by another git version (signature line, different stat) is left byte-for-byte."""
    patch = make_patch(upstream, {"README": "x\n"}, "readme") .rstrip("\n") + "\n-- \n2.30.0\n\n"
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(upstream.path))
    s.add_patch("readme", patch)
    before = s.snapshot()
    assert vp(s.root, "apply").rc == 0
    assert vp(s.root, "refresh", "--all").rc == 0
    assert s.snapshot() == before


def test_amend_then_refresh_writes_the_edit(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    ws = ws_of(s)
    # edit the first entry with a fixup + autosquash rebase, as a kernel engineer would
    (ws / "src/a.py").write_text((ws / "src/a.py").read_text().replace("a 6\n", "a 6 also\n"))
    git(ws, "commit", "-q", "-a", "--fixup", "HEAD~2")
    git(ws, "rebase", "-q", "-i", "--autosquash", "refs/vpatch/base", env={"GIT_SEQUENCE_EDITOR": "true"})
    r = vp(s.root, "--json", "refresh", "--all")
    assert r.rc == 0, r.err
    assert [p.split("/")[-1] for p in r.json["changed"]] == ["one.patch"]
    text = (s.root / "patches/one.patch").read_text()
    assert "+a 6 also" in text and "Vpatch-Entry" not in text and "TPOT 15.20 -> 15.11 ms." in text
    # and the refreshed series applies again to the same tree
    tree = git(ws, "rev-parse", "HEAD^{tree}")
    r = vp(s.root, "--json", "apply")
    assert r.rc == 0 and [x["result"] for x in r.json["done"]] == ["kept"] * 3
    assert vp(s.root, "--json", "apply", "--reset").rc == 0
    assert git(ws, "rev-parse", "HEAD^{tree}") == tree


def test_reorder_in_workspace_reorders_series(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    ws = ws_of(s)
    # move `two` before `ov`
    todo_editor = "python3 -c \"import sys;p=sys.argv[1];l=open(p).read().splitlines();" \
                  "picks=[x for x in l if x.startswith('pick')];rest=[x for x in l if not x.startswith('pick')];" \
                  "open(p,'w').write('\\n'.join([picks[0],picks[2],picks[1]]+rest)+'\\n')\""
    git(ws, "rebase", "-q", "-i", "refs/vpatch/base", env={"GIT_SEQUENCE_EDITOR": todo_editor})
    before = s.series.read_text()
    r = vp(s.root, "--json", "refresh", "--all")
    assert r.rc == 0 and r.json["order_changed"] is True
    # only the order moved: the same blocks, one blank line between them as before (tomlkit, given the old
    # tables in a new array, wrote a second blank line after each table that had one)
    after = s.series.read_text()
    assert "\n\n\n" not in after and after.count("\n") == before.count("\n"), after
    st = vp(s.root, "--json", "status").json
    assert [e["id"] for e in st["entries"]] == ["one", "two", "ov"]
    assert all(e["sync"] == "in-sync" for e in st["entries"])


def test_overlay_edit_is_written_back_whole(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    ws = ws_of(s)
    git(ws, "checkout", "-q", "HEAD~1")  # the overlay commit
    (ws / "src/new_kernel.cu").write_text("// kernel v2\n")
    git(ws, "commit", "-q", "-a", "--amend", "--no-edit")
    new_ov = git(ws, "rev-parse", "HEAD")
    git(ws, "checkout", "-q", "vpatch/v1.0.0")
    git(ws, "rebase", "-q", "--onto", new_ov, "HEAD~1")
    assert vp(s.root, "refresh", "ov").rc == 0
    assert (s.root / "overlay/ov/src/new_kernel.cu").read_text() == "// kernel v2\n"
    assert (s.root / "overlay/ov/src/sub/helper.h").read_text() == "#pragma once\n"


def test_new_entry_then_refresh_adds_it(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply", "--upto", "ov").rc == 0
    ws = ws_of(s)
    (ws / "src/b.py").write_text(lines(30, "b").replace("b 1\n", "b 1 gate\n"))
    r = vp(s.root, "new", "gate-fix", "-t", "gate: use is_cuda_alike")
    assert r.rc == 1 and "nothing is staged" in r.err
    git(ws, "add", "src/b.py")
    assert vp(s.root, "new", "gate-fix", "-t", "gate: use is_cuda_alike", "--area", "moe-runner").rc == 0
    r = vp(s.root, "--json", "refresh", "--all")
    assert r.rc == 0 and r.json["added"] == ["gate-fix"]
    ids = [e["id"] for e in vp(s.root, "--json", "status").json["entries"]]
    assert ids == ["one", "ov", "gate-fix", "two"]
    assert (s.root / "patches/gate-fix.patch").exists()
    assert 'area = "moe-runner"' in s.series.read_text()
    assert vp(s.root, "lint").rc == 0


def test_new_entry_author_is_the_series_author_unless_given(three_entries, vp):
    """`vpatch new` takes [series].author (not whoever the workspace's git says), `--author` over both."""
    s = three_entries
    s.header += 'author = "Fork Maintainer <fm@fork.invalid>"\n'
    s.flush()
    assert vp(s.root, "apply", "--upto", "ov").rc == 0
    ws = ws_of(s)
    (ws / "src/b.py").write_text(lines(30, "b").replace("b 1\n", "b 1 gate\n"))
    git(ws, "add", "src/b.py")
    assert vp(s.root, "new", "gate-fix", "-t", "gate: use is_cuda_alike").rc == 0
    assert git(ws, "log", "-1", "--format=%an <%ae>") == "Fork Maintainer <fm@fork.invalid>"
    (ws / "src/b.py").write_text(lines(30, "b").replace("b 2\n", "b 2 gate\n"))
    git(ws, "add", "src/b.py")
    r = vp(s.root, "new", "gate-fix-2", "-t", "gate: two", "--author", "Kernel Dev")
    assert r.rc == 1 and "is not 'Name <email>'" in r.err
    assert vp(s.root, "new", "gate-fix-2", "-t", "gate: two", "--author", "Kernel Dev <kd@fork.invalid>").rc == 0
    assert git(ws, "log", "-1", "--format=%an <%ae>") == "Kernel Dev <kd@fork.invalid>"
    assert vp(s.root, "refresh", "--all").rc == 0
    assert "From: Fork Maintainer <fm@fork.invalid>" in (s.root / "patches/gate-fix.patch").read_text()


def test_commit_without_entry_trailer_is_refused_by_refresh(three_entries, vp):
    s = three_entries
    assert vp(s.root, "apply").rc == 0
    ws = ws_of(s)
    (ws / "x").write_text("x\n")
    git(ws, "add", "x")
    git(ws, "commit", "-q", "-m", "stray")
    r = vp(s.root, "refresh", "--all")
    assert r.rc == 1 and "names no entry" in r.err and "Vpatch-Entry" in r.err


def test_import_and_export(tmp_path, upstream, vp):
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(upstream.path))
    # a colleague's topic branch in the upstream repo
    git(upstream.path, "checkout", "-q", "-b", "topic")
    upstream.write("src/a.py", lines(30, "a").replace("a 3\n", "a 3 int4\n"))
    upstream.commit("csrc: int4 GEMV for gfx11")
    upstream.write("src/b.py", lines(30, "b").replace("b 3\n", "b 3 bf16\n"))
    upstream.commit("dequant: bf16 shift and mask")
    r = vp(s.root, "--json", "import", "--repo", str(upstream.path), "--area", "csrc", "v1.0.0..topic")
    assert r.rc == 0, r.err
    assert r.json["imported"] == ["csrc-int4-gemv-for-gfx11", "dequant-bf16-shift-and-mask"]
    assert vp(s.root, "lint").rc == 0
    r = vp(s.root, "--json", "apply")
    assert r.rc == 0 and [x["result"] for x in r.json["done"]] == ["clean", "clean"]
    ws = ws_of(s)
    assert git(ws, "rev-parse", "HEAD^{tree}") == git(upstream.path, "rev-parse", "topic^{tree}")
    out = tmp_path / "out"
    r = vp(s.root, "--json", "export", "--branch", "for-review", "--format-patch", str(out))
    assert r.rc == 0
    assert git(ws, "rev-parse", "for-review") == git(ws, "rev-parse", "HEAD")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["0001-csrc-int4-gemv-for-gfx11.patch", "0002-dequant-bf16-shift-and-mask.patch"]
    assert "Vpatch-" not in (out / files[0]).read_text()
    assert vp(s.root, "export", "--branch", "for-review").rc == 1  # no silent overwrite


def test_reorder_pure():
    assert reorder(["a", "m", "b", "c"], ["b", "a", "c"]) == ["b", "a", "m", "c"]
    assert reorder(["m", "a", "b"], ["a", "x", "b"]) == ["m", "a", "x", "b"]
    assert reorder(["a", "b"], ["a", "b"]) == ["a", "b"]


def test_refresh_refuses_a_workspace_on_another_base(tmp_path, upstream, vp):
    """apply --base elsewhere is for trying; writing those commits back would silently re-base the patches."""
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(upstream.path))
    s.add_patch("one", make_patch(upstream, {"README": "x\n"}, "readme"))
    upstream.write("src/c.py", "c\n")
    upstream.commit("1.1", tag="v1.1.0")
    before = s.snapshot()
    assert vp(s.root, "apply", "--base", "v1.1.0").rc == 0
    r = vp(s.root, "refresh", "--all")
    assert r.rc == 1 and "pinned to v1.0.0" in r.err and "vpatch rebase --onto v1.1.0" in r.err
    assert s.snapshot() == before


def test_an_overlay_message_edited_in_the_workspace_is_written_back_as_it_reads(three_entries, vp):
    """An overlay's commit message edited in the workspace goes back into series.toml's `message`, a
    multi-line string that reads back as the body itself: no blank line put in front of it."""
    import tomllib

    s = three_entries
    assert vp(s.root, "apply").rc == 0
    ws = ws_of(s)
    git(ws, "checkout", "-q", "HEAD~1")  # the overlay commit
    trailers = git(ws, "show", "-s", "--format=%(trailers)", "HEAD")
    git(ws, "commit", "-q", "--amend", "-m", f'ov title\n\nWhy: the kernel "fast" path.\nSecond line.\n\n{trailers}')
    new_ov = git(ws, "rev-parse", "HEAD")
    git(ws, "checkout", "-q", "vpatch/v1.0.0")
    git(ws, "rebase", "-q", "--onto", new_ov, "HEAD~1")
    assert vp(s.root, "refresh", "ov").rc == 0, "refresh failed"
    ov = next(e for e in tomllib.loads(s.series.read_text())["entry"] if e["id"] == "ov")
    assert ov["message"] == 'Why: the kernel "fast" path.\nSecond line.'
    assert vp(s.root, "refresh", "ov").rc == 0 and vp(s.root, "--json", "status").json["entries"][1]["sync"] == "in-sync"
