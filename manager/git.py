"""The one git layer: every git call vpatch makes goes through :class:`Git`.

Porcelain is often simpler than GitPython's object API (``git apply --3way``, ``git mailinfo``,
``git patch-id``), and GitPython runs those by spawning the git binary too; so :meth:`Git.run`
spawns git itself with an argv list (never a shell string), an optional environment and stdin,
and returns exit status and output. GitPython (``Git.repo``) is imported only when a caller needs
its object model: importing it costs more than a whole ``vpatch status`` (README, "Start-up").
:class:`ObjectStore` is the one place objects are written without the git binary: the in-process apply
(``manager/treepatch.py``) writes its blobs, trees and commits through gitdb, GitPython's own object
database (its import is ~12 ms; all of GitPython's, ~190 ms).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import VpatchError

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class GitError(VpatchError):
    pass


def _env(env: dict | None) -> dict:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})}


def run_git(*args: str, cwd: Path | str | None = None, env: dict | None = None, input: str | bytes | None = None,
            check: bool = True, strip: bool = True) -> Result:
    """``git ARGS`` in ``cwd``, for the calls that have no :class:`Git` (yet): cloning into a new folder,
    a prefix worktree, an unpacked tree. Same conventions as :meth:`Git.run`."""
    proc = subprocess.run(["git", *args], cwd=cwd, env=_env(env),
                          input=input.encode() if isinstance(input, str) else input, capture_output=True)
    out = proc.stdout.decode("utf-8", "surrogateescape")
    err = proc.stderr.decode("utf-8", "surrogateescape")
    res = Result(proc.returncode, out.strip() if strip else out, err.strip())
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args[:3])}… failed in {cwd or os.getcwd()}: {res.err or res.out}".strip())
    return res


def run_git_bytes(*args: str, cwd: Path | str | None = None, env: dict | None = None,
                  input: bytes | None = None) -> bytes:
    """``git ARGS``'s raw stdout (``archive``, ``cat-file``); raises :class:`GitError` on failure."""
    proc = subprocess.run(["git", *args], cwd=cwd, env=_env(env), input=input, capture_output=True)
    if proc.returncode != 0:
        raise GitError(f"git {' '.join(args[:3])}… failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


class Git:
    def __init__(self, path: Path):
        self.path = Path(path)
        # the repository must be `path` itself, never one found above it (GitPython's Repo(path) rule)
        ceiling = {"GIT_CEILING_DIRECTORIES": str(self.path.resolve().parent)}
        r = self.run("rev-parse", "--absolute-git-dir", env=ceiling, check=False) if self.path.is_dir() else None
        if r is None or not r.ok:
            raise GitError(f"{self.path} is not a git repository")
        self._git_dir = Path(r.out)
        self._repo = None

    @classmethod
    def init(cls, path: Path, bare: bool = False) -> Git:
        Path(path).mkdir(parents=True, exist_ok=True)
        run_git("init", "-q", *(["--bare"] if bare else []), str(path))
        g = cls(path)
        g.run("config", "gc.auto", "0")
        return g

    @property
    def repo(self):  # git.Repo; imported on first use only
        if self._repo is None:
            import git as gitpython

            self._repo = gitpython.Repo(self.path)
        return self._repo

    @property
    def git_dir(self) -> Path:
        return self._git_dir

    def run(self, *args: str, env: dict | None = None, input: str | bytes | None = None,
            check: bool = True, strip: bool = True) -> Result:
        return run_git(*args, cwd=self.path, env=env, input=input, check=check, strip=strip)

    def run_bytes(self, *args: str, env: dict | None = None, input: bytes | None = None) -> bytes:
        return run_git_bytes(*args, cwd=self.path, env=env, input=input)

    # --- small helpers -----------------------------------------------------------------------
    def rev(self, ref: str) -> str | None:
        r = self.run("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
        return r.out if r.ok else None

    def tree_of(self, ref: str) -> str:
        return self.run("rev-parse", f"{ref}^{{tree}}").out

    def head_branch(self) -> str | None:
        r = self.run("symbolic-ref", "-q", "--short", "HEAD", check=False)
        return r.out if r.ok else None

    def head(self) -> str | None:
        return self.rev("HEAD")

    def status_porcelain(self) -> list[str]:
        out = self.run("status", "--porcelain=v1", "--untracked-files=all", strip=False).out
        return [line for line in out.splitlines() if line]

    def is_dirty(self) -> bool:
        return bool(self.status_porcelain())

    def unmerged_paths(self) -> list[str]:
        out = self.run("diff", "--name-only", "--diff-filter=U").out
        return sorted(set(out.splitlines())) if out else []

    def set_ref(self, ref: str, sha: str, message: str = "vpatch") -> None:
        self.run("update-ref", "-m", message, ref, sha)

    def delete_ref(self, ref: str) -> None:
        self.run("update-ref", "-d", ref, check=False)

    def commits(self, rev_range: str) -> list[str]:
        out = self.run("rev-list", "--reverse", "--topo-order", rev_range).out
        return out.splitlines() if out else []

    def commit_fields(self, sha: str) -> dict[str, str]:
        fmt = "%an%x00%ae%x00%aI%x00%s%x00%B%x00%P"
        an, ae, ad, subject, body, parents = self.run("show", "-s", f"--format={fmt}", sha, strip=False).out.split("\x00")
        return {"author_name": an, "author_email": ae, "author_date": ad, "subject": subject,
                "message": body, "parents": parents.strip()}

    def trailers(self, sha: str) -> dict[str, str]:
        out = self.run("show", "-s", "--format=%(trailers:only,unfold)", sha).out
        result: dict[str, str] = {}
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                result[k.strip()] = v.strip()
        return result

    def changed_files(self, sha: str) -> list[tuple[str, str]]:
        """(status letter, path) of a commit against its first parent (renames as delete+add)."""
        out = self.run("diff-tree", "-r", "--no-commit-id", "--name-status", "--no-renames", "-z",
                       f"{sha}^", sha, strip=False).out
        parts = [p for p in out.split("\x00") if p]
        return [(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]

    def read_blobs_once(self, specs: list[str]) -> list[bytes | None]:
        """``git cat-file --batch`` of ``specs`` in one process of its own; None where missing."""
        if not specs:
            return []
        raw = self.run_bytes("cat-file", "--batch", input=("\n".join(specs) + "\n").encode("utf-8", "surrogateescape"))
        out: list[bytes | None] = []
        pos = 0
        for _ in specs:
            nl = raw.index(b"\n", pos)
            header = raw[pos:nl].split()
            pos = nl + 1
            if not header or header[-1] == b"missing" or len(header) != 3:
                out.append(None)
                continue
            size = int(header[2])
            out.append(raw[pos:pos + size])
            pos += size + 1
        return out

    def patch_id(self, diff_text: str) -> str | None:
        out = self.run("patch-id", "--stable", input=diff_text).out
        return out.split()[0] if out else None


class CatFile:
    """One ``git cat-file --batch`` process kept open for many reads (an `apply` reads the Python files of every
    entry's commit: one process for the run instead of one per entry). Objects written after it started are
    found too (git looks loose objects up on each request). Close it, or use it as a context manager."""

    def __init__(self, g: Git):
        self._proc: subprocess.Popen | None = None
        self._g = g

    def read(self, specs: list[str]) -> list[bytes | None]:
        """The contents of ``specs`` (``<rev>:<path>`` or object ids); None where missing or ambiguous."""
        if any("\n" in s for s in specs):  # cannot go on one batch line: one-shot process
            return self._g.read_blobs_once(specs)
        if self._proc is None:
            self._proc = subprocess.Popen(["git", "cat-file", "--batch"], cwd=self._g.path, env=_env(None),
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        out: list[bytes | None] = []
        for spec in specs:
            self._proc.stdin.write(spec.encode("utf-8", "surrogateescape") + b"\n")
            self._proc.stdin.flush()
            header = self._proc.stdout.readline()
            if not header:
                raise GitError(f"git cat-file --batch ended early in {self._g.path}")
            parts = header.split()
            if len(parts) != 3 or parts[-1] == b"missing":
                out.append(None)  # "<spec> missing" / "<spec> ambiguous"
                continue
            out.append(self._proc.stdout.read(int(parts[2]) + 1)[:-1])
        return out

    def close(self) -> None:
        if self._proc is not None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> CatFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ObjectStore:
    """Objects read through a :class:`CatFile` and written as loose objects by gitdb (GitPython's object
    database, its ``LooseObjectDB``: zlib, a temporary file, one rename), for the in-process apply
    (``manager/treepatch.py``). Objects are immutable, so what was read or written is kept in memory."""

    def __init__(self, g: Git, reader: CatFile):
        self._g, self._reader = g, reader
        self._db: Any = None  # gitdb's LooseObjectDB, made on the first write
        self._seen: dict[str, bytes] = {}

    def read(self, sha: str) -> bytes | None:
        if sha not in self._seen:
            data = self._reader.read([sha])[0]
            if data is None:
                return None
            self._seen[sha] = data
        return self._seen[sha]

    def write(self, kind: str, data: bytes) -> str:
        import io

        from gitdb.base import IStream
        from gitdb.db.loose import LooseObjectDB

        if self._db is None:
            common = self._g.git_dir / "commondir"  # a linked worktree keeps its objects in the main .git
            base = (self._g.git_dir / common.read_text().strip()) if common.is_file() else self._g.git_dir
            self._db = LooseObjectDB(str(os.environ.get("GIT_OBJECT_DIRECTORY") or base / "objects"))
        sha = self._db.store(IStream(kind.encode(), len(data), io.BytesIO(data))).hexsha
        sha = sha.decode() if isinstance(sha, bytes) else sha
        self._seen[sha] = data
        return sha


class Scratch:
    """A throw-away bare repository that reads ``source_repo``'s objects (``objects/info/alternates``) and
    writes only its own: for work that must leave the source byte-for-byte unchanged (index-only checks,
    rendering patches of another repository's commits)."""

    def __init__(self, source_repo: Path):
        import tempfile

        self.tmp = Path(tempfile.mkdtemp(prefix="vpatch-check-"))
        self.path = self.tmp / "scratch.git"
        src = Path(source_repo)
        objects = (src / "objects") if (src / "objects").is_dir() else (src / ".git" / "objects")
        if not objects.is_dir():
            raise GitError(f"{src} is not a git repository (no objects folder)")
        self.git = Git.init(self.path, bare=True)
        lines = [str(objects.resolve())]
        src_alt = objects / "info" / "alternates"
        if src_alt.exists():  # the source may borrow objects itself
            lines += [ln for ln in src_alt.read_text().splitlines() if ln.strip()]
        (self.path / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (self.path / "objects" / "info" / "alternates").write_text("\n".join(lines) + "\n")
        self.source = Git(src)

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
