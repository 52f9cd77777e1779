"""The workspace: a git checkout of the base where each applied entry is one commit.

Layout inside the workspace's ``.git``:

- ``refs/vpatch/base`` — the base commit of the vpatch branch checked out now;
- ``vpatch/workspace.json`` — base, base commit, source and series of each vpatch branch;
- ``vpatch/operation.json`` — an operation in flight (apply/rebase stopped at a conflict, or killed);
  written *before* any change, so ``vpatch abort`` can always go back;
- ``vpatch/skipped.json`` — entries skipped on a branch, and why;
- ``vpatch/lock`` — the lock that keeps two vpatch processes apart.

Each entry commit carries trailers ``Vpatch-Entry: <id>`` and ``Vpatch-Digest: <sha256>`` (the digest of
the entry's content when it was applied), so the workspace maps back to the series at any time.
"""
from __future__ import annotations

import hashlib
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import atomic
from .errors import WorkspaceError
from .file_lock import locked
from .git import Git
from .series import Entry

ENTRY_TRAILER = "Vpatch-Entry"
DIGEST_TRAILER = "Vpatch-Digest"
BASE_REF = "refs/vpatch/base"


def branch_for(base: str) -> str:
    return f"vpatch/{base}"


@dataclass
class AppliedCommit:
    sha: str
    entry_id: str | None
    digest: str | None
    subject: str
    tree: str


class Workspace:
    def __init__(self, path: Path):
        self.path = Path(path)

    # --- existence and git -------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / ".git").exists()

    @property
    def git(self) -> Git:
        if not self.exists():
            raise WorkspaceError(f"no workspace at {self.path}",
                                 "run `vpatch apply` to create it (or pass --workspace DIR)")
        return Git(self.path)

    @property
    def vp_dir(self) -> Path:
        d = self.path / ".git" / "vpatch"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = (self.path / ".git" / "vpatch" / "lock") if self.exists() else self.path.parent / f".{self.path.name}.vpatch-lock"
        with locked(lock_path):
            yield

    # --- recorded state ----------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.vp_dir / "workspace.json"

    def info(self) -> dict:
        return atomic.read_json(self.info_path, {"branches": {}}) or {"branches": {}}

    def record_branch(self, branch: str, base: str, base_commit: str, source: str, series: str) -> None:
        info = self.info()
        info.setdefault("branches", {})[branch] = {"base": base, "base_commit": base_commit,
                                                   "source": source, "series": series}
        atomic.write_json(self.info_path, info)

    def branch_info(self, branch: str | None = None) -> dict | None:
        branch = branch or self.git.head_branch()
        return self.info().get("branches", {}).get(branch) if branch else None

    @property
    def op_path(self) -> Path:
        return self.vp_dir / "operation.json"

    def operation(self) -> dict | None:
        return atomic.read_json(self.op_path) if self.exists() else None

    def save_operation(self, op: dict) -> None:
        atomic.write_json(self.op_path, op)

    def clear_operation(self) -> None:
        try:
            self.op_path.unlink()
        except FileNotFoundError:
            pass

    def skipped(self, branch: str) -> dict[str, str]:
        return (atomic.read_json(self.vp_dir / "skipped.json", {}) or {}).get(branch, {})

    def set_skipped(self, branch: str, skipped: dict[str, str]) -> None:
        data = atomic.read_json(self.vp_dir / "skipped.json", {}) or {}
        data[branch] = skipped
        atomic.write_json(self.vp_dir / "skipped.json", data)

    # --- reading the applied stack -----------------------------------------------------------
    def base_commit(self) -> str | None:
        return self.git.rev(BASE_REF)

    def applied(self, head: str = "HEAD") -> list[AppliedCommit]:
        """The commits between the base and ``head``, oldest first, with their vpatch trailers."""
        g = self.git
        base = self.base_commit()
        if base is None:
            return []
        sep = "\x1e"
        fmt = f"%H%x00%T%x00%s%x00%(trailers:key={ENTRY_TRAILER},valueonly,separator=%x2C)%x00" \
              f"%(trailers:key={DIGEST_TRAILER},valueonly,separator=%x2C){sep}"
        out = g.run("log", "--reverse", "--first-parent", f"--format={fmt}", f"{base}..{head}", strip=False).out
        result = []
        for rec in out.split(sep):
            rec = rec.strip("\n")
            if not rec:
                continue
            sha, tree, subject, eid, digest = rec.split("\x00")
            result.append(AppliedCommit(sha, eid.strip() or None, digest.strip() or None, subject, tree))
        return result

    def require_clean(self, what: str) -> None:
        dirty = self.git.status_porcelain()
        if dirty:
            shown = ", ".join(line[3:] for line in dirty[:5]) + (" …" if len(dirty) > 5 else "")
            raise WorkspaceError(
                f"the workspace {self.path} has uncommitted changes ({shown}); {what} will not run over them",
                "commit them (`vpatch new ID` makes a new entry of staged changes), stash them, "
                "or discard them with `git -C WORKSPACE checkout -- . && git clean -fd`")

    def require_no_operation(self) -> None:
        op = self.operation()
        if op:
            cur = (op.get("current") or {}).get("id")
            raise WorkspaceError(
                f"a `vpatch {op['op']}` is in progress" + (f" (stopped at entry {cur})" if cur else ""),
                "finish it with `vpatch continue` or `vpatch skip`, or undo it with `vpatch abort`")


# --- entry content: digest and safety checks ----------------------------------------------------

def overlay_files(overlay_root: Path, entry_id: str) -> list[tuple[str, Path]]:
    """(path inside vLLM's tree, file in overlay/) for every file of an overlay entry, sorted."""
    root = overlay_root / entry_id
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            if p.is_symlink():
                raise WorkspaceError(f"overlay {root}: {p.relative_to(root)} is a symbolic link",
                                     "overlays hold plain files only; replace the link by the file")
        for name in filenames:
            p = Path(dirpath) / name
            files.append((p.relative_to(root).as_posix(), p))
    return sorted(files)


def entry_digest(entry: Entry, patches_dir: Path, overlay_root: Path) -> str:
    h = hashlib.sha256()
    if entry.kind == "patch":
        h.update((patches_dir / entry.patch_file).read_bytes())
    else:
        for rel, p in overlay_files(overlay_root, entry.id):
            mode = "755" if p.stat().st_mode & stat.S_IXUSR else "644"
            h.update(f"{rel}\0{mode}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing anything that would land outside ``root`` (``..``, absolute, symlinks)."""
    from .series import safe_relpath

    why = safe_relpath(rel)
    if why:
        raise WorkspaceError(f"refusing to write {rel!r}: {why}")
    target = root / rel
    real_root = root.resolve()
    parent = target.parent
    if not str(parent.resolve()).startswith(str(real_root)):
        raise WorkspaceError(f"refusing to write {rel!r}: a directory on its way is a link leaving the tree")
    if target.is_symlink():
        raise WorkspaceError(f"refusing to write through the symbolic link {rel!r} in the workspace")
    return target
