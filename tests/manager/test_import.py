"""`vpatch import --repo R` only reads R: a read-only copy of R stays byte-for-byte unchanged."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from conftest import SeriesDir, git


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for name in dirnames + files:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            out[rel] = f"{stat.S_IMODE(st.st_mode):o} " + (hashlib.sha256(p.read_bytes()).hexdigest()
                                                          if stat.S_ISREG(st.st_mode) else "dir")
    return out


def _read_only(root: Path) -> None:
    for dirpath, dirnames, files in os.walk(root):
        for name in dirnames + files:
            p = Path(dirpath) / name
            p.chmod(stat.S_IMODE(p.lstat().st_mode) & ~0o222)
    root.chmod(0o555)


def test_import_leaves_the_source_repository_unchanged(tmp_path, upstream, vp):
    fork = tmp_path / "fork-src"
    git(tmp_path, "clone", "-q", str(upstream.path), str(fork))
    git(fork, "config", "user.name", "Kernel Dev")
    git(fork, "config", "user.email", "kd@fork.invalid")
    (fork / "src" / "a.py").write_text((fork / "src" / "a.py").read_text() + "fast = True\n")
    # committed by someone else than the author (a maintainer applying it): its patch is not the commit itself
    git(fork, "commit", "-qam", "a: fast path\n\nMeasured 2 % faster.",
        env={"GIT_COMMITTER_NAME": "Maintainer", "GIT_COMMITTER_EMAIL": "m@fork.invalid"})
    (fork / "src" / "b.py").write_text((fork / "src" / "b.py").read_text() + "cache = {}\n")
    git(fork, "commit", "-qam", "b: cache")
    ro = tmp_path / "mirror.git"
    git(tmp_path, "clone", "-q", "--mirror", str(fork), str(ro))
    _read_only(ro)
    before = _snapshot(ro)
    s = SeriesDir(tmp_path / "series", "v1.0.0", str(upstream.path))
    r = vp(s.root, "--json", "import", "v1.0.0..HEAD", "--repo", str(ro))
    try:
        assert r.rc == 0, r.out + r.err
        assert _snapshot(ro) == before  # no object, ref, index or config written (root ignores the modes)
        assert r.json["imported"] == ["a-fast-path", "b-cache"]
        text = (s.root / "patches" / "a-fast-path.patch").read_text()
        assert "Subject: [PATCH] a: fast path" in text and "Measured 2 % faster." in text
        assert text.startswith("From 0000000000000000000000000000000000000000 ")
    finally:
        for dirpath, dirnames, files in os.walk(ro):
            for name in dirnames + files:
                (Path(dirpath) / name).chmod(0o755)
        ro.chmod(0o755)
        shutil.rmtree(ro)
