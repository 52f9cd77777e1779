"""The pypi source's release repository: a release's commit never depends on what else is cached.

Real git throughout; only the download of an sdist is replaced by a small unpacked tree per version (the real
sdists are exercised in tests/engine/test_vllm_pypi.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import git
from vpatch.manager import sources
from vpatch.manager.sources import PypiSource


@pytest.fixture
def fake_index(monkeypatch):
    """Releases 0.1.0 … 0.4.0 of a package 'demo'; records which versions were downloaded."""
    downloads: list[str] = []

    def download(package, version, tmp: Path, progress=None) -> Path:
        downloads.append(version)
        d = tmp / f"{package}-{version}"
        (d / "demo").mkdir(parents=True)
        (d / "PKG-INFO").write_text(f"Name: {package}\nVersion: {version}\n")
        (d / "demo" / "__init__.py").write_text(f"VERSION = {version!r}\n")
        (d / "demo" / "common.py").write_text("def f():\n    return 1\n")
        return d

    monkeypatch.setattr(sources, "download_sdist_tree", download)
    monkeypatch.setattr(sources, "index_versions", lambda package="vllm": ["0.4.0", "0.3.0", "0.2.0", "0.1.0"])
    return downloads


def _cache(monkeypatch, path: Path) -> PypiSource:
    monkeypatch.setenv("VPATCH_CACHE", str(path))
    return PypiSource("pypi:demo", package="demo")


def test_same_release_same_sha_whatever_else_is_cached(tmp_path, monkeypatch, fake_index):
    a = _cache(monkeypatch, tmp_path / "a")
    sha_a = {v: a.ensure(v) for v in ("v0.3.0", "v0.1.0")}
    assert git(a.repo(), "rev-parse", "v0.3.0") == sha_a["v0.3.0"]
    b = _cache(monkeypatch, tmp_path / "b")
    sha_b = {v: b.ensure(v) for v in ("v0.1.0", "v0.2.0", "v0.4.0", "v0.3.0")}
    assert sha_a["v0.3.0"] == sha_b["v0.3.0"] and sha_a["v0.1.0"] == sha_b["v0.1.0"]
    # caching an older release afterwards moved no tag
    assert git(b.repo(), "rev-parse", "v0.4.0") == sha_b["v0.4.0"]
    assert git(b.repo(), "rev-parse", "refs/heads/releases") == sha_b["v0.4.0"]
    # each release is a root commit holding exactly its sdist
    assert git(b.repo(), "rev-list", "--count", "v0.3.0") == "1"
    assert git(b.repo(), "show", "v0.2.0:demo/__init__.py") == "VERSION = '0.2.0'"


def test_old_chained_cache_is_retagged_in_place(tmp_path, monkeypatch, fake_index, capsys):
    src = _cache(monkeypatch, tmp_path / "c")
    stable = {v: src.ensure(v) for v in ("v0.1.0", "v0.2.0")}
    repo = src.repo()
    # what the old scheme left: v0.2.0 chained onto v0.1.0
    tree2 = git(repo, "rev-parse", "v0.2.0^{tree}")
    old = git(repo, "commit-tree", tree2, "-p", stable["v0.1.0"], "-m", "demo 0.2.0 (sdist from PyPI)")
    git(repo, "update-ref", "refs/tags/v0.2.0", old)
    assert src.ensure("v0.2.0") == stable["v0.2.0"]
    assert git(repo, "rev-parse", "v0.2.0") == stable["v0.2.0"]
    said = capsys.readouterr()  # a note: stdout, or stderr where an earlier command left --json mode on
    assert "old chained scheme: re-tagged 1 release" in (said.out + said.err).replace("\n", " ")
    assert fake_index == ["0.1.0", "0.2.0"]  # migrated, nothing downloaded again


def test_walk_fetches_every_release_in_the_range(tmp_path, monkeypatch, fake_index):
    src = _cache(monkeypatch, tmp_path / "d")
    src.ensure("v0.1.0")
    w = src.walk("v0.1.0", "v0.4.0")
    assert w["releases"] == ["v0.2.0", "v0.3.0", "v0.4.0"]
    assert sorted(fake_index) == ["0.1.0", "0.2.0", "0.3.0", "0.4.0"]
    repo = src.repo()
    chain = git(repo, "rev-list", "--first-parent", "--reverse", f"{w['from_commit']}..{w['to_commit']}").split()
    assert [git(repo, "show", f"{c}:demo/__init__.py") for c in chain] == \
        [f"VERSION = '0.{i}.0'" for i in (2, 3, 4)]
    assert git(repo, "rev-parse", f"{w['to_commit']}^{{tree}}") == git(repo, "rev-parse", "v0.4.0^{tree}")
    # deterministic: the same range walked in another cache gives the same commits
    other = _cache(monkeypatch, tmp_path / "e")
    assert other.walk("v0.1.0", "v0.4.0")["to_commit"] == w["to_commit"]


def test_a_busy_cache_is_waited_for_not_an_error(tmp_path, monkeypatch, fake_index):
    """Parallel jobs share one cache: while another process holds its lock, ensure() waits."""
    import threading
    import time

    from vpatch.manager.file_lock import locked

    src = _cache(monkeypatch, tmp_path / "f")
    src.ensure("v0.1.0")
    held, release = threading.Event(), threading.Event()

    def other():
        with locked(src.repo().parent / "demo.lock", "PyPI release cache"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    held.wait(10)
    threading.Timer(1.0, release.set).start()
    t0 = time.monotonic()
    sha = src.ensure("v0.2.0")
    assert time.monotonic() - t0 >= 0.9  # it waited for the other holder instead of failing
    assert git(src.repo(), "rev-parse", "v0.2.0") == sha
    t.join()


def test_upstream_bisect_positions_over_releases_are_named_by_their_tags(tmp_path, monkeypatch, fake_index):
    """An upstream bisect over the pypi source walks every release; each position must be a release the
    series can be applied on (a walk commit is none: the nightly's upstream bisect skipped v0.29.0 as
    "'553b2b28…' is not a release version")."""
    from types import SimpleNamespace

    from vpatch.manager.cli.bisect import _upstream_positions

    src = _cache(monkeypatch, tmp_path / "u")
    series = SimpleNamespace(source="pypi:demo")
    pos = _upstream_positions(SimpleNamespace(root=tmp_path), series, "v0.1.0", "v0.3.0")
    assert [p.label for p in pos] == ["v0.1.0", "v0.2.0", "v0.3.0"]
    repo = src.repo()
    assert [git(repo, "rev-parse", f"{p.commit}^{{tree}}") for p in pos] == \
        [git(repo, "rev-parse", f"{v}^{{tree}}") for v in ("v0.1.0", "v0.2.0", "v0.3.0")]
