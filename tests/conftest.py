"""Fixtures shared by the tests: real git repositories in tmp dirs, and the vpatch CLI run for real."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
GIT_ENV = {"GIT_AUTHOR_NAME": "Upstream Dev", "GIT_AUTHOR_EMAIL": "dev@upstream.invalid",
           "GIT_COMMITTER_NAME": "Upstream Dev", "GIT_COMMITTER_EMAIL": "dev@upstream.invalid",
           "GIT_AUTHOR_DATE": "2026-01-02T03:04:05+00:00", "GIT_COMMITTER_DATE": "2026-01-02T03:04:05+00:00"}


def git(cwd: Path, *args: str, input: str | None = None, env: dict | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, text=True,
                       env={**os.environ, **GIT_ENV, **(env or {})})
    if r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {r.stderr}")
    return r.stdout.strip()


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)


def run_vpatch(cwd: Path, *args: str, env: dict | None = None, timeout: int = 900) -> Run:
    r = subprocess.run([sys.executable, "-m", "vpatch.manager.cli.main", *args], cwd=cwd, capture_output=True,
                       text=True, env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=timeout)
    return Run(r.returncode, r.stdout, r.stderr)


@pytest.fixture
def vp():
    return run_vpatch


class Upstream:
    """A small upstream project: files, tagged releases, and commits to turn into patches."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")
        git(path, "config", "gc.auto", "0")

    def write(self, rel: str, text: str) -> None:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def commit(self, message: str, tag: str | None = None) -> str:
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        if tag:
            git(self.path, "tag", tag)
        return git(self.path, "rev-parse", "HEAD")

    def patch_of(self, sha: str) -> str:
        return git(self.path, "format-patch", "-1", "--stdout", "--zero-commit", "--no-signature", sha) + "\n"


def lines(n: int, prefix: str = "line") -> str:
    return "".join(f"{prefix} {i}\n" for i in range(1, n + 1))


@pytest.fixture
def upstream(tmp_path) -> Upstream:
    """v1.0.0 and v1.1.0 of a small project; v1.1.0 changes the line that entry `two` touches."""
    up = Upstream(tmp_path / "upstream")
    up.write("src/a.py", lines(30, "a"))
    up.write("src/b.py", lines(30, "b"))
    up.write("README", "upstream\n")
    up.commit("release 1.0.0", tag="v1.0.0")
    return up


class SeriesDir:
    def __init__(self, root: Path, base: str, source: str):
        self.root = root
        (root / "patches").mkdir(parents=True)
        (root / "overlay").mkdir()
        self.entries: list[str] = []
        self.header = f'[series]\nname = "test"\nbase = "{base}"\nsource = "{source}"\n'
        self.flush()

    @property
    def series(self) -> Path:
        return self.root / "patches" / "series.toml"

    def add_patch(self, eid: str, patch: str, extra: str = "") -> None:
        (self.root / "patches" / f"{eid}.patch").write_text(patch)
        self.entries.append(f'[[entry]]\nid = "{eid}"\ntitle = "{eid} title"\n{extra}')
        self.flush()

    def add_overlay(self, eid: str, files: dict[str, str], extra: str = "") -> None:
        for rel, text in files.items():
            p = self.root / "overlay" / eid / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        self.entries.append(f'[[entry]]\nid = "{eid}"\nkind = "overlay"\ntitle = "{eid} title"\n{extra}')
        self.flush()

    def flush(self) -> None:
        self.series.write_text(self.header + "\n" + "\n".join(self.entries))

    def snapshot(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes()
                for d in ("patches", "overlay") for p in sorted((self.root / d).rglob("*")) if p.is_file()}


def make_patch(up: Upstream, edits: dict[str, str], message: str, author: str = "Kernel Dev <kd@fork.invalid>") -> str:
    """A format-patch of ``edits`` on top of upstream's current HEAD (upstream left unchanged)."""
    head = git(up.path, "rev-parse", "HEAD")
    for rel, text in edits.items():
        up.write(rel, text)
    git(up.path, "add", "-A")
    name, email = author[:-1].split(" <")
    git(up.path, "commit", "-q", "-m", message,
        env={"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": "2026-04-28T10:00:00+02:00"})
    patch = up.patch_of("HEAD")
    git(up.path, "reset", "-q", "--hard", head)
    return patch


@pytest.fixture
def three_entries(tmp_path, upstream) -> SeriesDir:
    """A series of a patch, an overlay and a patch onto v1.0.0 of `upstream`."""
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(upstream.path))
    a = lines(30, "a")
    s.add_patch("one", make_patch(upstream, {"src/a.py": a.replace("a 5\n", "a 5 fast\n")},
                                  "a: make line 5 fast\n\nTPOT 15.20 -> 15.11 ms."))
    s.add_overlay("ov", {"src/new_kernel.cu": "// kernel\n", "src/sub/helper.h": "#pragma once\n"})
    s.add_patch("two", make_patch(upstream, {"src/b.py": lines(30, "b").replace("b 10\n", "b 10 faster\n")},
                                  "b: line 10 faster"))
    return s


@pytest.fixture(scope="session")
def vpatch_cache() -> Path:
    """The cache of release repos and runtimes: the same folder vpatch itself uses ($VPATCH_CACHE, else
    ~/.cache/vpatch), so the tests reuse what `vpatch apply` / `build` / `.ci/setup.sh` already fetched."""
    from vpatch.manager.context import cache_dir

    return cache_dir()
