"""A thin layer over GitPython: every git call vpatch makes goes through :class:`Git`.

Porcelain is often simpler than GitPython's object API (``git apply --3way``, ``git mailinfo``,
``git patch-id``), so :meth:`Git.run` executes the git binary through GitPython with an argv list
(never a shell string), an optional environment and stdin, and returns exit status and output.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import git as gitpython

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


class Git:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.repo = gitpython.Repo(self.path)
        except (gitpython.NoSuchPathError, gitpython.InvalidGitRepositoryError):
            raise GitError(f"{self.path} is not a git repository") from None

    @classmethod
    def init(cls, path: Path, bare: bool = False) -> "Git":
        Path(path).mkdir(parents=True, exist_ok=True)
        gitpython.Repo.init(path, bare=bare)
        g = cls(path)
        g.run("config", "gc.auto", "0")
        return g

    @property
    def git_dir(self) -> Path:
        return Path(self.repo.git_dir)

    def run(self, *args: str, env: dict | None = None, input: str | bytes | None = None,
            check: bool = True, strip: bool = True) -> Result:
        full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        if env:
            full_env.update(env)
        proc = subprocess.run(
            ["git", *args], cwd=self.path, env=full_env,
            input=input.encode() if isinstance(input, str) else input,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out = proc.stdout.decode("utf-8", "surrogateescape")
        err = proc.stderr.decode("utf-8", "surrogateescape")
        if strip:
            out = out.strip()
        res = Result(proc.returncode, out, err.strip())
        if check and proc.returncode != 0:
            raise GitError(f"git {' '.join(args[:3])}… failed in {self.path}: {res.err or res.out}".strip())
        return res

    def run_bytes(self, *args: str, env: dict | None = None, input: bytes | None = None) -> bytes:
        full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        proc = subprocess.run(["git", *args], cwd=self.path, env=full_env, input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise GitError(f"git {' '.join(args[:3])}… failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

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

    def patch_id(self, diff_text: str) -> str | None:
        out = self.run("patch-id", "--stable", input=diff_text).out
        return out.split()[0] if out else None
