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
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import atomic, output
from .context import cache_dir
from .errors import VpatchError
from .file_lock import LockedError, locked
from .git import Git, run_git
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
    kind = "local"

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
    kind = "git"

    def repo(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.spec)[-80:]
        return cache_dir() / "git" / f"{slug}-{hashlib.sha1(self.spec.encode()).hexdigest()[:8]}.git"

    def ensure(self, ref: str, progress=None) -> str:
        path = self.repo()
        with waiting_lock(path.with_suffix(".lock"), "source mirror"):
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                r = run_git("clone", "--mirror", "--", self.spec, str(path), check=False)
                if not r.ok:
                    shutil.rmtree(path, ignore_errors=True)
                    raise SourceError(f"cannot clone {self.spec}: {r.err.splitlines()[-1:]}",
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
    """Released sdists as git commits: one **root commit** and one tag ``vX.Y.Z`` per release.

    A release's commit depends only on its tree (fixed identity, date and message), so the same release has
    the same sha whatever else is cached, on every machine, and caching another release never moves a tag.
    Ancestry between releases, which drift and an upstream bisect walk, is made on demand by :meth:`walk`: a
    chain from ``A``'s commit through every release between ``A`` and ``B`` on the index, in version order
    (deterministic too, given that list). Caches built by the old scheme (each release chained onto the
    previously cached one) are detected by their tags and re-tagged in place (trees unchanged).
    """

    kind = "pypi"

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

    def _lock(self):
        self.repo().parent.mkdir(parents=True, exist_ok=True)
        return waiting_lock(self.repo().parent / f"{self.package}.lock", "PyPI release cache")

    def releases(self) -> dict[str, str]:
        """version -> tree sha of every release already in the cache."""
        return atomic.read_json(self._index_file, {}) or {}

    def message(self, version: str) -> str:
        return f"{self.package} {version} (sdist from PyPI)\n"

    def release_commit(self, version: str, tree: str) -> str:
        """The sha of ``version``'s root commit (pure: the object git writes for it has exactly this id)."""
        return commit_sha(tree, [], self.message(version))

    def ensure(self, ref: str, progress=None) -> str:
        version = normalize_release(ref)
        with self._lock():
            g = self._open()
            releases = self.releases()
            self._migrate(g, releases)
            if version not in releases:
                tree = self._import_release(g, version, progress)
                releases[version] = tree
                atomic.write_json(self._index_file, releases)
            return self._tag(g, version, releases[version])

    def _tag(self, g: Git, version: str, tree: str) -> str:
        sha = self.release_commit(version, tree)
        if g.rev(f"refs/tags/v{version}") != sha:
            made = g.run("commit-tree", tree, env=RELEASE_ENV, input=self.message(version)).out
            assert made == sha, (made, sha)
            g.set_ref(f"refs/tags/v{version}", sha)
        newest = max(self.releases() or {version: tree}, key=lambda v: parse_version(v) or (0,))
        if version == newest or g.rev("refs/heads/releases") is None:
            g.set_ref("refs/heads/releases", sha)
            g.run("symbolic-ref", "HEAD", "refs/heads/releases")
        return sha

    def _migrate(self, g: Git, releases: dict[str, str]) -> None:
        """Re-tag releases whose tag is not their root commit (a cache built by the old chained scheme)."""
        if not releases:
            return
        tags = {name: sha for sha, name in (line.split() for line in
                g.run("for-each-ref", "--format=%(objectname) %(refname:short)", "refs/tags").out.splitlines())}
        stale = [v for v, tree in releases.items()
                 if tags.get(f"v{v}") not in (None, self.release_commit(v, tree))]
        for v in stale:
            self._tag(g, v, releases[v])
        if stale:
            output.say(f"[yellow]note:[/] the release cache {self.repo()} was built by vpatch's old chained scheme: "
                       f"re-tagged {len(stale)} release(s) as stable root commits (trees unchanged; a workspace "
                       "made on the old commits needs `vpatch apply --reset`)")

    def _import_release(self, g: Git, version: str, progress=None) -> str:
        with tempfile.TemporaryDirectory(prefix="vpatch-sdist-") as tmp:
            tree_dir = download_sdist_tree(self.package, version, Path(tmp), progress=progress)
            index = Path(tmp) / "index"
            env = {"GIT_INDEX_FILE": str(index), "GIT_WORK_TREE": str(tree_dir), "GIT_DIR": str(g.git_dir)}
            # -f: take the sdist as it is, even files that a .gitignore inside it would hide
            g.run("add", "-A", "-f", ".", env=env)
            return g.run("write-tree", env=env).out

    # --- ancestry on demand ---------------------------------------------------------------------
    def releases_between(self, frm: str, to: str) -> tuple[list[str], str | None]:
        """Every release ``frm < v <= to`` in version order, from the index through pip (or, when pip cannot
        list them, the cached ones, with a note saying so)."""
        # normalize_release raises on a non-release, so both parse
        a, b = parse_version(normalize_release(frm)) or (0,), parse_version(normalize_release(to)) or (0,)
        try:
            known, note = index_versions(self.package), None
        except SourceError as e:
            known = list(self.releases())
            note = f"could not list the releases on the index ({e.message}); walking only the cached ones"
        wanted = {normalize_release(to)} | {v for v in known if a < (parse_version(v) or (0,)) <= b}
        return sorted(wanted, key=lambda v: parse_version(v) or (0,)), note

    def walk(self, frm: str, to: str, progress=None) -> dict:
        """A first-parent history from release ``frm`` to release ``to``: ``frm``'s commit, then one commit per
        release in between (downloaded if missing) and ``to``, in version order. Returns ``{"from_commit",
        "to_commit", "releases", "note"}``; ``to_commit`` has ``to``'s tree (its tag is the root commit)."""
        versions, note = self.releases_between(frm, to)
        frm_sha = self.ensure(frm, progress=progress)
        for v in versions:
            self.ensure(v, progress=progress)
        releases = self.releases()
        with self._lock():
            g = self._open()
            parent = frm_sha
            for v in versions:
                parent = g.run("commit-tree", releases[v], "-p", parent, env=RELEASE_ENV,
                               input=self.message(v)).out
            g.set_ref(f"refs/vpatch/walk/v{normalize_release(frm)}-v{normalize_release(to)}", parent)
        return {"from_commit": frm_sha, "to_commit": parent, "releases": [f"v{v}" for v in versions], "note": note}


@contextmanager
def waiting_lock(path: Path, what: str, timeout_s: float = 1800):
    """The cache's lock, waiting (up to ``timeout_s``) while another vpatch process downloads into it: a shared
    cache is used by parallel jobs, and a download takes seconds."""
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        with ExitStack() as stack:
            try:
                stack.enter_context(locked(path, what))
            except LockedError:
                if time.monotonic() > deadline:
                    raise
                if not said:
                    output.say(f"[dim]waiting for another vpatch process using the {what} ({path})[/]")
                    said = True
                time.sleep(0.5)
                continue
            yield
            return


RELEASE_DATE = "946684800 +0000"  # 2000-01-01: a fixed date, so a release's commit depends on its tree only
RELEASE_ENV = {**RELEASE_AUTHOR, "GIT_AUTHOR_DATE": f"@{RELEASE_DATE}", "GIT_COMMITTER_DATE": f"@{RELEASE_DATE}"}


def commit_sha(tree: str, parents: list[str], message: str) -> str:
    """The object id git gives a commit made with :data:`RELEASE_ENV` (pure)."""
    ident = f"{RELEASE_AUTHOR['GIT_AUTHOR_NAME']} <{RELEASE_AUTHOR['GIT_AUTHOR_EMAIL']}> {RELEASE_DATE}"
    body = f"tree {tree}\n" + "".join(f"parent {p}\n" for p in parents) + \
        f"author {ident}\ncommitter {ident}\n\n{message}"
    data = body.encode()
    return hashlib.sha1(b"commit %d\0" % len(data) + data).hexdigest()


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


def index_versions(package: str = "vllm") -> list[str]:
    """The final releases of ``package`` on the index, newest first, asked through pip."""
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", package],
                          capture_output=True, text=True)
    m = re.search(r"^Available versions:\s*(.+)$", proc.stdout, re.M)
    if proc.returncode != 0 or not m:
        raise SourceError(f"cannot list releases of {package}: {proc.stderr.strip()[-200:]}")
    return [v.strip() for v in m.group(1).split(",") if parse_version(v.strip())]


def newest_release(package: str = "vllm") -> str:
    """The newest release on the index, asked through pip."""
    return "v" + index_versions(package)[0]
