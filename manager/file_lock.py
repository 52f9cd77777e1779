"""Locks: vpatch's own (one process per workspace) and git's (``*.lock`` files a killed git leaves).

**vpatch's lock** is an ``fcntl.flock`` on a file (:func:`locked`) or on the workspace *directory itself*
(:func:`locked_dir`): the kernel drops it when the holder dies, even by ``kill -9``, so a crash never
leaves a stale vpatch lock. Locking the directory means the lock exists before the clone does and never
moves (it used to sit beside a workspace not made yet and inside it afterwards, so two first `apply`s were
not kept apart), and no file is ever written outside the workspace for it.

**git's locks** (``.git/index.lock``, ``HEAD.lock``, ``refs/**.lock``, ...) are files created with
``O_EXCL`` and removed by the git process that made them; a git killed in between leaves one behind and
every later git command in the repository fails. :func:`git_locks` finds them and says whether each is
*provably stale*. On Linux a lock is provably stale when, while vpatch holds its own workspace lock (so no
other vpatch process can start git here):

1. no process on the machine has the lock file open (every ``/proc/<pid>/fd`` is read), and
2. no live git process (``/proc/<pid>/comm`` starting with ``git``) has its working directory inside the
   workspace or its git directory (git keeps a lock it has closed, e.g. while ``git commit`` runs an editor
   or hook, only while it lives: this catches that window), and
3. every live git process on the machine could be inspected (one we may not read, e.g. another user's,
   might be working here: then nothing is proven and nothing is removed; zombies hold nothing and are
   passed over).

Without ``/proc`` nothing is provable and vpatch only reports the lock. Removal renames the lock aside and
checks it is the very file (inode) that was inspected before unlinking it, so a git that started between
the scan and the removal keeps its fresh lock.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

from .errors import LockedError, WorkspaceError

PROC = Path("/proc")


@contextmanager
def locked(path: Path, what: str = "workspace") -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            try:
                holder = os.pread(fd, 64, 0).decode().strip()
            except OSError:
                pass
            raise _busy(what, path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _busy(what: str, path: Path, holder: str) -> LockedError:
    return LockedError(
        f"another vpatch process is working on this {what} (lock {path}" + (f", pid {holder}" if holder else "") + ")",
        "wait for it to finish; the lock goes away by itself when that process ends")


@contextmanager
def locked_dir(path: Path, what: str = "workspace") -> Iterator[None]:
    """Hold an exclusive flock on the directory ``path`` (which must exist)."""
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except NotADirectoryError:
            raise WorkspaceError(f"{path} is a file, not a directory",
                                 "pass --workspace a folder (new, empty, or a git checkout)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ino = os.fstat(fd).st_ino
            os.close(fd)
            raise _busy(what, path, ", ".join(map(str, flock_holders(ino)))) from None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_ino, st.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev):
            break
        os.close(fd)  # the directory was replaced while we waited: lock the new one
    else:
        raise LockedError(f"the {what} {path} keeps being replaced", "is another program recreating it?")
    try:
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def flock_holders(ino: int) -> list[int]:
    """Pids holding an flock on inode ``ino`` (from /proc/locks; empty where unknown)."""
    try:
        text = (PROC / "locks").read_text()
    except OSError:
        return []
    pids = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(ino):
            pids.append(int(parts[4]))
    return pids


# --- git's lock files -------------------------------------------------------------------------------------

@dataclass
class GitLock:
    path: Path
    stale: bool
    why: str  # why it is (not) provably stale
    ino: int = 0

    def as_dict(self) -> dict:
        return {"path": str(self.path), "stale": self.stale, "why": self.why}


@dataclass
class _Proc:
    pid: int
    comm: str
    cwd: str | None
    fds: list[str] | None  # None: not readable


def _procs() -> list[_Proc]:
    """Every other live process: name, working directory and open files (None where not readable).
    Processes that are gone, or zombies (they hold no files and no directory), are left out."""
    out = []
    me = os.getpid()
    for d in PROC.iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            comm = (d / "comm").read_text().strip()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone
        if state in ("Z", "X"):
            continue
        try:
            cwd: str | None = os.readlink(d / "cwd")
        except PermissionError:
            cwd = None
        except OSError:
            continue  # exited meanwhile
        try:
            found: list[str] = []
            fds: list[str] | None = found
            for f in os.listdir(d / "fd"):
                try:
                    found.append(os.readlink(d / "fd" / f))
                except FileNotFoundError:
                    pass  # closed meanwhile
        except PermissionError:
            fds = None
        except OSError:
            continue
        out.append(_Proc(int(d.name), comm, cwd, fds))
    return out


def _inside(p: str | None, roots: list[str]) -> bool:
    return p is not None and bool(p) and any(p == r or p.startswith(r + "/") for r in roots)


def git_processes(roots: list[Path]) -> list[tuple[int, str]]:
    """Live git processes whose working directory is inside one of ``roots`` (pid, command line)."""
    if not PROC.is_dir():
        return []
    rs = [str(Path(r).resolve()) for r in roots]
    found = []
    for p in _procs():
        if p.comm.startswith("git") and _inside(p.cwd, rs):
            found.append((p.pid, _cmdline(p.pid)))
    return found


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"


def _lock_files(git_dir: Path) -> list[Path]:
    found = [p for p in git_dir.glob("*.lock") if p.is_file()]
    refs = git_dir / "refs"
    if refs.is_dir():
        found += [p for p in refs.rglob("*.lock") if p.is_file()]
    return sorted(found)


def git_locks(git_dir: Path, work_tree: Path) -> list[GitLock]:
    """git's lock files in ``git_dir``, each with whether it is provably stale (see the module doc)."""
    files = _lock_files(git_dir)
    if not files:
        return []
    if not PROC.is_dir():
        return [GitLock(f, False, "no /proc on this system: cannot prove that no git holds it") for f in files]
    roots = [str(Path(work_tree).resolve()), str(Path(git_dir).resolve())]
    procs = _procs()
    busy_git = [p for p in procs if p.comm.startswith("git") and _inside(p.cwd, roots)]
    blind_git = [p for p in procs if p.comm.startswith("git") and (p.cwd is None or p.fds is None)]
    result = []
    for f in files:
        real = str(f.resolve())
        try:
            ino = f.stat().st_ino
        except FileNotFoundError:
            continue
        holders = [p for p in procs if p.fds and any(x in (real, real + " (deleted)") for x in p.fds)]
        if holders:
            h = holders[0]
            result.append(GitLock(f, False, f"held open by pid {h.pid} ({_cmdline(h.pid)})", ino))
        elif busy_git:
            h = busy_git[0]
            result.append(GitLock(f, False, f"git pid {h.pid} ({_cmdline(h.pid)}) is working in this repository", ino))
        elif blind_git:
            result.append(GitLock(f, False, f"git pid {blind_git[0].pid} cannot be inspected (another user's?)", ino))
        else:
            result.append(GitLock(f, True, "no process holds it open and no git runs in this repository", ino))
    return result


def remove_stale(lock: GitLock) -> bool:
    """Remove a lock found provably stale, only if it is still the same file (inode) that was inspected."""
    if not lock.stale:
        return False
    aside = lock.path.with_name(f"{lock.path.name}.vpatch-stale-{os.getpid()}")
    try:
        os.rename(lock.path, aside)
    except FileNotFoundError:
        return False
    if os.stat(aside).st_ino != lock.ino:  # a new git made a fresh lock between the scan and now: give it back
        try:
            os.link(aside, lock.path)
        except FileExistsError:
            pass
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def wait_for_git(roots: list[Path], timeout: float = 30.0, on_wait=None) -> list[tuple[int, str]]:
    """Wait (up to ``timeout`` s) until no git process works inside ``roots``; return those still running.

    A vpatch killed alone leaves its git child running for a moment (an orphan finishing its step); the
    next vpatch command waits for it rather than racing it."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        left = git_processes(roots)
        if not left or time.monotonic() > deadline:
            return left
        if on_wait and not said:
            on_wait(left)
            said = True
        time.sleep(0.05)
