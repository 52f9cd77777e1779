"""The workspace: a git checkout of the base where each applied entry is one commit.

Layout inside the workspace's ``.git``:

- ``refs/vpatch/base`` — the base commit of the vpatch branch checked out now;
- ``vpatch/workspace.json`` — base, base commit, source and series of each vpatch branch;
- ``vpatch/operation.json`` — an operation in flight (apply/rebase stopped at a conflict, or killed);
  written *before* any change, so ``vpatch abort`` can always go back;
- ``vpatch/skipped.json`` — entries skipped on a branch, and why;

The lock that keeps two vpatch processes apart is an flock on the workspace folder itself
(:func:`~.file_lock.locked_dir`). Every state file is a typed, versioned record (:mod:`state`).

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
from collections.abc import Iterator

from . import atomic, state
from .errors import WorkspaceError
from .file_lock import git_locks, locked_dir, remove_stale, wait_for_git
from .git import Git
from .series import Entry

ENTRY_TRAILER = "Vpatch-Entry"
DIGEST_TRAILER = "Vpatch-Digest"
BASE_REF = "refs/vpatch/base"
NEW_DIR = ".vpatch-new"  # apply's half-made clone inside a workspace folder, which apply finishes


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
        self._git: Git | None = None

    # --- existence and git -------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / ".git").exists()

    def check_path(self) -> None:
        """Refuse a workspace path naming a file (one line, before anything reads or writes)."""
        if self.path.exists() and not self.path.is_dir():
            raise WorkspaceError(f"the workspace {self.path} is a file, not a directory",
                                 "pass --workspace a folder: a new or empty one, or a vpatch workspace")

    @property
    def git(self) -> Git:
        if not self.exists():
            self._git = None
            raise WorkspaceError(f"no workspace at {self.path}",
                                 "run `vpatch apply` to create it (or pass --workspace DIR)")
        if self._git is None:  # one per workspace: making one asks git for its git dir (a process each time)
            self._git = Git(self.path)
        return self._git

    @property
    def vp_dir(self) -> Path:
        d = self.path / ".git" / "vpatch"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One vpatch process per workspace: an flock on the workspace folder itself, taken before the
        workspace is cloned (the folder is made empty first and removed again if nothing came of it), so it
        never moves and nothing is written outside the workspace. Then git's leftovers are dealt with:
        git processes a killed vpatch left running are waited for, and provably stale git locks removed."""
        self.check_path()
        made = self._make_folders()
        with locked_dir(self.path):
            try:
                if self.exists():
                    self.recover_git()
                yield
            finally:
                for d in made:  # the deepest first: only folders this call made, and only while still empty
                    if d.is_dir() and not any(d.iterdir()):
                        d.rmdir()

    def _make_folders(self) -> list[Path]:
        """Make the workspace folder and any missing parents; return those made, deepest first, so that a
        refused or empty run removes them again. A parent that is a file is one clear line, not a crash."""
        missing = []
        for d in (self.path, *self.path.parents):
            if d.exists():
                if not d.is_dir():
                    raise WorkspaceError(f"the workspace {self.path} cannot be made: {d} is a file, not a folder",
                                         "pass --workspace a folder path (the default is .vpatch/vllm beside the "
                                         "series)")
                break
            missing.append(d)
        made: list[Path] = []
        for d in reversed(missing):
            try:
                d.mkdir()
                made.insert(0, d)
            except FileExistsError:
                pass  # another process made it in between: it is that process's to keep or remove
            except OSError as e:
                for m in made:
                    m.rmdir()
                raise WorkspaceError(f"cannot make the workspace folder {d}: {e.strerror}",
                                     "pass --workspace a folder you can write to") from None
        return made

    def git_locks(self) -> list:
        """git's lock files in this workspace, each with whether it is provably stale (for `status`)."""
        return git_locks(self.git.git_dir, self.path) if self.exists() else []

    def recover_git(self) -> list[str]:
        """Wait for git processes still working here (left by a killed vpatch), then remove provably stale
        git locks, saying so; refuse with one line if a live one remains. Runs under the workspace lock."""
        from . import output

        left = wait_for_git([self.path], on_wait=lambda ps: output.say(
            f"waiting for git pid {ps[0][0]} ({ps[0][1]}) still working in {self.path}"))
        if left:
            pid, cmd = left[0]
            raise WorkspaceError(f"git pid {pid} ({cmd}) is still working in the workspace {self.path}",
                                 "wait for it to finish (or stop it), then run the command again")
        for p in (self.path / ".git" / "vpatch").glob("fast-index*"):
            p.unlink(missing_ok=True)  # apply's private index (and its lock): only a vpatch under this lock uses it
        removed = []
        for lk in self.git_locks():
            rel = lk.path.relative_to(self.path) if lk.path.is_relative_to(self.path) else lk.path
            if remove_stale(lk):
                removed.append(str(rel))
                output.say(f"[yellow]removed a stale git lock[/] {rel} ({lk.why}: left by a killed git)")
            elif lk.path.exists():
                raise WorkspaceError(f"git's lock {lk.path} is in use: {lk.why}",
                                     "wait for that git command to finish; if it is gone for good, delete the lock file")
        return removed

    # --- recorded state ----------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.vp_dir / "workspace.json"

    def info(self) -> dict:
        return state.read(state.WorkspaceInfo, self.info_path, None) or {"branches": {}}

    def record_branch(self, branch: str, base: str, base_commit: str, source: str, series: str) -> None:
        info = self.info()
        info.setdefault("branches", {})[branch] = {"base": base, "base_commit": base_commit,
                                                   "source": source, "series": series}
        atomic.write_json(self.info_path, state.stamp(info))

    def branch_info(self, branch: str | None = None) -> dict | None:
        branch = branch or self.git.head_branch()
        return self.info().get("branches", {}).get(branch) if branch else None

    @property
    def op_path(self) -> Path:
        return self.vp_dir / "operation.json"

    def operation(self) -> dict | None:
        return state.read(state.Operation, self.op_path) if self.exists() else None

    def save_operation(self, op: dict) -> None:
        atomic.write_json(self.op_path, state.stamp(op))

    def clear_operation(self) -> None:
        try:
            self.op_path.unlink()
        except FileNotFoundError:
            pass

    def skipped(self, branch: str) -> dict[str, str]:
        return (state.read(state.Skipped, self.vp_dir / "skipped.json", {}) or {}).get(branch, {})

    def set_skipped(self, branch: str, skipped: dict[str, str], *, repair: bool = False) -> None:
        path = self.vp_dir / "skipped.json"
        try:
            data = state.read(state.Skipped, path, {}) or {}
        except state.StateError:
            if not repair:
                raise
            data = {}  # `abort` restores a branch's record whole; a damaged file must not stop it
        data[branch] = skipped
        atomic.write_json(path, state.stamp(data))

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
