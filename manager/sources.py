"""Where the base comes from: a git URL, a local repository, or ``pypi``.

Every source ends up as a local git repository (:meth:`Source.repo`) holding the requested ref;
the workspace fetches from it.

- **git URL** (default: upstream vLLM): a ``git clone --mirror`` cached under ``$VPATCH_CACHE/git``,
  fetched again when a ref is missing.
- **local path**: a repository or mirror the user already has; used as it is.
- **pypi**: released sdists turned into a local repository with one commit and one tag ``vX.Y.Z``
  per release, in version order (for labs that reach PyPI but not GitHub). Cached under
  ``$VPATCH_CACHE/pypi/<package>``; asking for a new release downloads only that one. The sdist's
  tree is taken from ``pip download --no-clean --no-binary :all:``: pip unpacks the sdist and then
  fails to prepare its metadata (vLLM's build needs torch); the unpacked tree it leaves behind in a
  private TMPDIR is exactly the sdist's content. pip stays the only client talking to the index.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import atomic
from .context import cache_dir
from .errors import VpatchError
from .file_lock import locked
from .git import Git
from .series import parse_version

RELEASE_AUTHOR = {"GIT_AUTHOR_NAME": "PyPI release", "GIT_AUTHOR_EMAIL": "release@vpatch.invalid",
                  "GIT_COMMITTER_NAME": "PyPI release", "GIT_COMMITTER_EMAIL": "release@vpatch.invalid"}


class SourceError(VpatchError):
    pass


@dataclass
class Source:
    spec: str

    @property
    def kind(self) -> str:
        raise NotImplementedError

    def repo(self) -> Path:
        """A local git repository that can be fetched from."""
        raise NotImplementedError

    def ensure(self, ref: str, progress=None) -> str:
        """Make ``ref`` available in :meth:`repo`; return its commit sha."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind}:{self.spec}"


def resolve_source(spec: str, series_root: Path | None = None) -> Source:
    if spec == "pypi" or spec.startswith("pypi:"):
        return PypiSource(spec, package=spec.split(":", 1)[1] if ":" in spec else "vllm")
    if re.match(r"^(https?|ssh|git|file)://", spec) or re.match(r"^[\w.-]+@[\w.-]+:", spec):
        return GitUrlSource(spec)
    path = Path(spec).expanduser()
    if not path.is_absolute() and series_root is not None:
        path = (series_root / path)
    return LocalSource(str(path.resolve()))


class LocalSource(Source):
    kind = "local"  # type: ignore[assignment]

    def repo(self) -> Path:
        p = Path(self.spec)
        if not p.exists():
            raise SourceError(f"source repository {p} does not exist",
                              "pass --source with a git URL, a local repository path, or 'pypi'")
        return p

    def ensure(self, ref: str, progress=None) -> str:
        sha = Git(self.repo()).rev(ref)
        if sha is None:
            raise SourceError(f"ref {ref!r} not found in source repository {self.spec}",
                              "check the base name (a tag like v0.28.0, a branch or a sha)")
        return sha


class GitUrlSource(Source):
    kind = "git"  # type: ignore[assignment]

    def repo(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.spec)[-80:]
        return cache_dir() / "git" / f"{slug}-{hashlib.sha1(self.spec.encode()).hexdigest()[:8]}.git"

    def ensure(self, ref: str, progress=None) -> str:
        path = self.repo()
        with locked(path.with_suffix(".lock"), "source mirror"):
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                r = subprocess.run(["git", "clone", "--mirror", "--", self.spec, str(path)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    shutil.rmtree(path, ignore_errors=True)
                    raise SourceError(f"cannot clone {self.spec}: {r.stderr.strip().splitlines()[-1:]}",
                                      "no network to this host? use --source pypi or a local mirror path")
            g = Git(path)
            sha = g.rev(ref)
            if sha is None:
                r = g.run("fetch", "--prune", "--tags", "origin", check=False)
                sha = g.rev(ref)
                if sha is None:
                    raise SourceError(f"ref {ref!r} not found in {self.spec}" + (f" (fetch: {r.err})" if not r.ok else ""),
                                      "check the base name")
        return sha


class PypiSource(Source):
    """Released sdists as a git history: one commit + tag per release, in version order."""

    kind = "pypi"  # type: ignore[assignment]

    def __init__(self, spec: str, package: str = "vllm"):
        super().__init__(spec)
        self.package = package

    def repo(self) -> Path:
        return cache_dir() / "pypi" / f"{self.package}.git"

    @property
    def _index_file(self) -> Path:
        return self.repo() / "vpatch-releases.json"

    def _open(self) -> Git:
        path = self.repo()
        if not (path / "HEAD").exists():
            g = Git.init(path, bare=True)
        else:
            g = Git(path)
        return g

    def releases(self) -> dict[str, str]:
        """version -> tree sha of every release already in the cache."""
        return atomic.read_json(self._index_file, {}) or {}

    def ensure(self, ref: str, progress=None) -> str:
        version = normalize_release(ref)
        with locked(self.repo().parent / f"{self.package}.lock", "PyPI release cache"):
            g = self._open()
            releases = self.releases()
            if version not in releases:
                tree = self._import_release(g, version, progress)
                releases[version] = tree
                atomic.write_json(self._index_file, releases)
                self._rebuild_chain(g, releases)
            sha = g.rev(f"refs/tags/v{version}")
            if sha is None:  # index and refs out of step (e.g. a crash between them): rebuild refs
                self._rebuild_chain(g, releases)
                sha = g.rev(f"refs/tags/v{version}")
        assert sha is not None
        return sha

    def _import_release(self, g: Git, version: str, progress=None) -> str:
        with tempfile.TemporaryDirectory(prefix="vpatch-sdist-") as tmp:
            tree_dir = download_sdist_tree(self.package, version, Path(tmp), progress=progress)
            index = Path(tmp) / "index"
            env = {"GIT_INDEX_FILE": str(index), "GIT_WORK_TREE": str(tree_dir), "GIT_DIR": str(g.git_dir)}
            # -f: take the sdist as it is, even files that a .gitignore inside it would hide
            g.run("add", "-A", "-f", ".", env=env)
            return g.run("write-tree", env=env).out

    def _rebuild_chain(self, g: Git, releases: dict[str, str]) -> None:
        """(Re)create the linear history: one commit per release in version order, one tag each.

        Commits are deterministic (fixed identity, date from the version order), so the same set of
        releases gives the same shas on every machine. Inserting an older release re-parents the
        later ones; their trees (what builds and results are keyed by) do not change.
        """
        ordered = sorted(releases, key=lambda v: parse_version(v) or (0,))
        parent = None
        for i, version in enumerate(ordered):
            date = f"@{946684800 + i * 86400} +0000"  # 2000-01-01 + i days: order, not history
            env = {**RELEASE_AUTHOR, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
            args = ["commit-tree", releases[version], "-m", f"{self.package} {version} (sdist from PyPI)"]
            if parent:
                args += ["-p", parent]
            parent = g.run(*args, env=env).out
            g.set_ref(f"refs/tags/v{version}", parent)
        if parent:
            g.set_ref("refs/heads/releases", parent)
            g.run("symbolic-ref", "HEAD", "refs/heads/releases")


def normalize_release(ref: str) -> str:
    v = ref[1:] if ref.startswith("v") else ref
    if parse_version(v) is None:
        raise SourceError(f"{ref!r} is not a release version (the pypi source knows releases like v0.28.0)",
                          "use a tag such as v0.28.0, or a git source for commits and branches")
    return v


def download_sdist_tree(package: str, version: str, tmp: Path, progress=None) -> Path:
    """Download and unpack ``package==version``'s sdist with pip; return the unpacked tree."""
    work = tmp / "pip-tmp"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    argv = [sys.executable, "-m", "pip", "download", "--no-clean", "--no-deps", "--no-binary", ":all:",
            "--no-build-isolation", f"{package}=={version}", "-d", str(tmp / "dl")]
    if progress:
        progress(f"downloading {package}=={version} sdist")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    candidates = [p.parent for p in work.glob("pip-*/*/PKG-INFO")]
    if not candidates:
        archive = next((tmp / "dl").glob("*.tar.gz"), None) if (tmp / "dl").exists() else None
        if archive is not None:  # metadata preparation succeeded: unpack the archive ourselves
            shutil.unpack_archive(str(archive), str(work / "unpacked"))
            candidates = [p.parent for p in (work / "unpacked").glob("*/PKG-INFO")]
    for c in candidates:
        if re.search(rf"^Version:\s*{re.escape(version)}\s*$", (c / "PKG-INFO").read_text(errors="replace"), re.M):
            return c
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    raise SourceError(f"could not get the sdist of {package}=={version} from the package index: {tail}",
                      "check the version exists (`pip index versions vllm`) and that pip reaches its index")


def newest_release(package: str = "vllm") -> str:
    """The newest release on the index, asked through pip."""
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", package],
                          capture_output=True, text=True)
    m = re.search(r"^\S+ \(([^)]+)\)", proc.stdout, re.M)
    if proc.returncode != 0 or not m:
        raise SourceError(f"cannot list releases of {package}: {proc.stderr.strip()[-200:]}")
    return "v" + m.group(1)
