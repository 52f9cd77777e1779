"""lint and init: errors name the file, the line and the entry."""
from __future__ import annotations

import os

from conftest import SeriesDir, make_patch


def test_lint_reports_file_line_and_entry(tmp_path, upstream, vp):
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(upstream.path))
    s.add_patch("good", make_patch(upstream, {"README": "x\n"}, "x"))
    s.entries.append('[[entry]]\nid = "good"\ntitle = "dup"\n')
    s.entries.append('[[entry]]\nid = "Bad Id"\ntitle = "t"\n')
    s.entries.append('[[entry]]\nid = "claims"\ntitle = "t"\n[[entry.claims]]\nmetric = "speed"\n')
    s.flush()
    r = vp(s.root, "--json", "lint")
    assert r.rc == 1
    probs = r.json["problems"]
    text = s.series.read_text().splitlines()
    dup = next(p for p in probs if "duplicate id" in p["message"])
    assert dup["entry"] == "good" and text[dup["line"] - 1] == "[[entry]]" and "first defined at line" in dup["message"]
    bad = next(p for p in probs if "Bad Id" in p["message"])
    assert text[bad["line"] - 1].startswith("id = ")
    assert any("unknown metric 'speed'" in p["message"] and p["entry"] == "claims" for p in probs)
    # the human form is file:line [entry]
    r = vp(s.root, "lint")
    assert "patches/series.toml:" in r.out and "[entry good]" in r.out


def test_lint_missing_files_and_hostile_paths(tmp_path, upstream, vp):
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(upstream.path))
    s.entries.append('[[entry]]\nid = "missing"\ntitle = "t"\n')
    evil = make_patch(upstream, {"README": "x\n"}, "x").replace("a/README", "a/../../etc/passwd").replace("b/README", "b/../../etc/passwd")
    (s.root / "patches" / "evil.patch").write_text(evil)
    s.entries.append('[[entry]]\nid = "evil"\ntitle = "t"\n')
    s.entries.append('[[entry]]\nid = "ov"\nkind = "overlay"\ntitle = "t"\n')
    (s.root / "overlay" / "ov").mkdir()
    os.symlink("/etc/passwd", s.root / "overlay" / "ov" / "passwd")
    s.entries.append('[[entry]]\nid = "abs"\ntitle = "t"\npatch = "/etc/passwd"\n')
    s.flush()
    r = vp(s.root, "--json", "lint")
    assert r.rc == 1
    msgs = [(p["entry"], p["message"]) for p in r.json["problems"]]
    assert ("missing", f"patch file {s.root / 'patches' / 'missing.patch'} does not exist") in msgs
    assert any(e == "evil" and "leaves the tree" in m for e, m in msgs)
    assert any(e == "ov" and "symbolic link" in m for e, m in msgs)
    assert any(e == "abs" and "plain name inside patches/" in m for e, m in msgs)
    evil_line = next(p for p in r.json["problems"] if p["entry"] == "evil")
    assert evil_line["file"].endswith("evil.patch") and evil_line["line"] > 0
    # apply refuses a series lint rejects, before touching anything
    r = vp(s.root, "apply")
    assert r.rc == 1 and not (s.root / ".vpatch" / "vllm").exists()


def test_invalid_toml_names_line(tmp_path, vp):
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "series.toml").write_text('[series]\nbase = "v0.28.0"\n[[entry]]\nid = \n')
    r = vp(tmp_path, "lint")
    assert r.rc == 1 and "series.toml:4" in r.out and "not valid TOML" in r.out


def test_init_starts_an_empty_valid_series(tmp_path, vp):
    r = vp(tmp_path, "--json", "init", "--base", "v0.28.0", "--source", "pypi", "myfork")
    assert r.rc == 0
    root = tmp_path / "myfork"
    assert (root / "overlay").is_dir() and ".vpatch/" in (root / ".gitignore").read_text()
    r = vp(root, "--json", "lint")
    assert r.rc == 0 and r.json["entries"] == 0
    assert vp(tmp_path, "init", "--base", "v0.28.0", "myfork").rc == 1  # never clobbers


def test_series_option_points_elsewhere(three_entries, vp, tmp_path):
    s = three_entries
    r = vp(tmp_path, "--series", str(s.series), "--json", "lint")
    assert r.rc == 0 and r.json["entries"] == 3
    r = vp(tmp_path, "--json", "status")
    assert r.rc == 1 and "series file not found" in r.json["error"]
