"""Broken Python that a merge can leave behind: compile the touched files and look for redefined and undefined
names with pyflakes, reporting only what the entry *added* (vLLM's own files are not always pyflakes-clean).

A 3-way merge applies text, not meaning: when upstream added ``from vllm import envs`` and the entry adds
``import vllm.envs as envs`` beside it, git merges both without a conflict, and the file still imports. This
module is run after every entry that touches Python (``apply``, ``continue``, ``rebase``: on the entry's
commit; ``check``: on the temporary index), and its findings are reported on the entry.

Findings of a file after the entry, minus those the same file had before it (matched by kind and message,
not by line, since lines move), are the entry's. Kinds kept: syntax errors (``compile``), redefinitions of
unused names, undefined names (also in ``__all__``) and locals used before assignment, duplicate arguments.
"""
from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import asdict, dataclass

from pyflakes import checker as _checker
from pyflakes import messages as _m

from . import atomic

KINDS = {
    _m.RedefinedWhileUnused: "redefinition",
    _m.UndefinedName: "undefined-name",
    _m.UndefinedExport: "undefined-name",
    _m.UndefinedLocal: "undefined-name",
    _m.DuplicateArgument: "duplicate-argument",
}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    kind: str       # syntax-error | redefinition | undefined-name | duplicate-argument
    message: str

    def key(self) -> tuple[str, str, str]:
        """What identifies the finding across versions of the file (line numbers move)."""
        return (self.file, self.kind, self.message.split(" from line ")[0])

    def describe(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


def findings(path: str, source: bytes | str) -> list[Finding]:
    """Syntax error, or pyflakes' redefinition / undefined-name findings, of one file's text.

    Pure in what it returns; the work is cached by the text's hash (in memory and under
    ``$VPATCH_CACHE/pycheck/``): the findings of a text do not depend on its path, and pyflakes over one
    large vLLM file costs ~40 ms, which was a third of a 25-patch `apply`. Re-applying, rebasing or
    checking the same files again reads them from the cache."""
    data = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
    return [Finding(path, line, kind, message) for line, kind, message in _cached(data)]


_MEMO: dict[str, list[tuple[int, str, str]]] = {}


@functools.cache
def _cache_tag() -> str:
    import sys

    import pyflakes

    rules = ",".join(sorted(f"{k.__name__}={v}" for k, v in KINDS.items()))
    digest = hashlib.sha1(rules.encode()).hexdigest()[:8]
    return f"py{sys.version_info[0]}{sys.version_info[1]}-pyflakes{pyflakes.__version__}-{digest}"


def _cache_file(key: str):
    from .context import cache_dir

    return cache_dir() / "pycheck" / _cache_tag() / key[:2] / f"{key}.json"


def _lookup(data: bytes) -> list[tuple[int, str, str]] | None:
    """The findings of ``data`` if they are in memory or in the cache folder; None if it must be analysed."""
    return _lookup_key(hashlib.sha256(data).hexdigest())


def _lookup_key(key: str) -> list[tuple[int, str, str]] | None:
    import json

    if key in _MEMO:
        return _MEMO[key]
    try:
        got = [(int(a), str(b), str(c)) for a, b, c in json.loads(_cache_file(key).read_text())]
    except (OSError, ValueError, TypeError):  # not cached yet, or a damaged entry: analyse again
        return None
    _MEMO[key] = got
    return got


def _cached(data: bytes) -> list[tuple[int, str, str]]:
    import json

    key = hashlib.sha256(data).hexdigest()
    got = _lookup_key(key)
    if got is None:
        got = _analyse(data)
        try:
            atomic.write_bytes(_cache_file(key), json.dumps(got).encode(), fsync=False)
        except OSError:
            pass  # a read-only cache only costs time
        _MEMO[key] = got
    return got


def _analyse(data: bytes) -> list[tuple[int, str, str]]:
    import ast

    text = data.decode("utf-8", "replace")
    try:
        tree = ast.parse(text, filename="<entry>")
        compile(tree, "<entry>", "exec", dont_inherit=True)
    except SyntaxError as e:
        return [(e.lineno or 0, "syntax-error", e.msg)]
    except ValueError as e:  # e.g. null bytes
        return [(0, "syntax-error", str(e))]
    w = _checker.Checker(tree, filename="<entry>")
    out = []
    for msg in w.messages:
        kind = KINDS.get(type(msg))
        if kind:
            out.append((msg.lineno, kind, msg.message % msg.message_args))
    return sorted(out, key=lambda f: (f[0], f[2]))


def added(path: str, before: bytes | str | None, after: bytes | str | None) -> list[Finding]:
    """The findings of ``after`` that ``before`` (None: the file is new) did not have (pure)."""
    if after is None:
        return []
    now = findings(path, after)
    if not now or before is None:
        return now
    old = Counter(f.key() for f in findings(path, before))
    out = []
    for f in now:
        if old[f.key()]:
            old[f.key()] -= 1
        else:
            out.append(f)
    return out


def as_dicts(found: list[Finding]) -> list[dict]:
    return [asdict(f) for f in found]


def describe(found: list[dict]) -> str:
    """One line for an entry's findings."""
    head = "; ".join(f"{f['file']}:{f['line']} {f['kind']}: {f['message']}" for f in found[:3])
    return f"broken Python after the merge: {head}" + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")


# --- reading the two sides from git ---------------------------------------------------------------
def read_blobs(g, specs: list[str], reader=None) -> list[bytes | None]:
    """The contents of ``specs`` (``<rev>:<path>`` or blob shas), through ``reader`` (a :class:`~.git.CatFile`
    kept open by the caller) or one ``git cat-file --batch`` process; None where missing."""
    if not specs:
        return []
    return reader.read(specs) if reader is not None else g.read_blobs_once(specs)


Pair = tuple[str, bytes | None, bytes | None]  # (path, text before the entry or None, text after it)


def commit_findings(g, sha: str, reader=None, touched: list[str] | None = None) -> list[dict]:
    """The findings an entry's commit added to the Python files it touches (against its first parent);
    ``reader``: a :class:`~.git.CatFile` to read them through; ``touched``: the paths the commit leaves
    files at, when the caller knows them (the patch it applied), else git's diff-tree says."""
    return pairs_findings(commit_pairs(g, sha, reader, touched))


def pairs_findings(pairs: list[Pair]) -> list[dict]:
    """The findings each file's ``after`` added to its ``before`` (analysed, or from the cache)."""
    found: list[Finding] = []
    for p, before, after in pairs:
        found += added(p, before, after)
    return as_dicts(found)


def cached_pairs_findings(pairs: list[Pair]) -> list[dict] | None:
    """:func:`pairs_findings` when every analysis it needs is cached; None when one is not (nothing analysed)."""
    for _, before, after in pairs:
        if after is None:
            continue
        now = _lookup(after)
        if now is None or (now and before is not None and _lookup(before) is None):
            return None
    return pairs_findings(pairs)


def commit_pairs(g, sha: str, reader=None, touched: list[str] | None = None) -> list[Pair]:
    """The Python files the commit ``sha`` touches, with their texts before and after it."""
    if touched is None:
        out = g.run("diff-tree", "-r", "--no-commit-id", "--name-status", "--no-renames", "-z", f"{sha}^", sha,
                    strip=False, check=False).out
        parts = [p for p in out.split("\0") if p]
        touched = [parts[i + 1] for i in range(0, len(parts) - 1, 2) if parts[i] != "D"]
    paths = [p for p in touched if p.endswith(".py")]
    if not paths:
        return []
    blobs = read_blobs(g, [f"{sha}^:{p}" for p in paths] + [f"{sha}:{p}" for p in paths], reader)
    return [(p, blobs[i], blobs[len(paths) + i]) for i, p in enumerate(paths)]


def blob_findings(g, before: dict[str, str], after: dict[str, str]) -> list[dict]:
    """The same, from path -> blob maps of the Python files before and after an entry (an index-only check)."""
    paths = [p for p in sorted(after) if p.endswith(".py") and after[p] != before.get(p)]
    if not paths:
        return []
    olds = [p for p in paths if p in before]
    blobs = read_blobs(g, [after[p] for p in paths] + [before[p] for p in olds])
    new = dict(zip(paths, blobs[:len(paths)], strict=False))
    old = dict(zip(olds, blobs[len(paths):], strict=False))
    found: list[Finding] = []
    for p in paths:
        found += added(p, old.get(p), new[p])
    return as_dicts(found)


# --- beside a run of entries ------------------------------------------------------------------------
def _read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``; None at end of file."""
    import os

    buf = bytearray()
    while len(buf) < n:
        got = os.read(fd, n - len(buf))
        if not got:
            return None
        buf += got
    return bytes(buf)


def _send(fd: int, obj: object) -> None:
    import os
    import pickle

    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(len(data).to_bytes(8, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd: int) -> object | None:
    import pickle

    head = _read_exact(fd, 8)
    if head is None:
        return None
    body = _read_exact(fd, int.from_bytes(head, "little"))
    return None if body is None else pickle.loads(body)


class _Worker:
    """One forked copy of vpatch that analyses the pairs it is sent until its job pipe closes.

    Forked, not spawned: it starts in a millisecond with pyflakes already imported (a spawned one needs a
    Python start, ~0.15 s, and began too late to help a first apply). Right after the fork it closes every
    descriptor but its two pipes -- the workspace lock (an flock, which a forked child would otherwise hold),
    the cat-file pipes -- so a kill -9 of vpatch frees the lock at once, and the worker, whose job pipe then
    reads end-of-file, ends by itself. It ignores SIGINT (vpatch's Ctrl-C closes its pipes) and never runs
    the collector over what it inherited (``gc.freeze``: a copied GitPython process handle must not be
    finalised here)."""

    def __init__(self) -> None:
        import gc
        import os

        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        _bigger_pipe(job_w)
        gc.freeze()
        try:
            pid = os.fork()
        except OSError:
            gc.unfreeze()
            for fd in (job_r, job_w, res_r, res_w):
                os.close(fd)
            raise
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                _serve(job_r, res_w)
                code = 0
            finally:
                os._exit(code)
        gc.unfreeze()
        os.close(job_r)
        os.close(res_w)
        self.pid, self._jobs, self._results = pid, job_w, res_r
        self.sent: list[str] = []  # keys of the jobs sent and not yet answered, in order
        self.answers: dict[str, list[dict]] = {}
        self.load = 0  # bytes of text sent and not yet answered

    def send(self, key: str, pairs: list[Pair], size: int) -> None:
        _send(self._jobs, pairs)
        self.sent.append(key)
        self.load += size

    def answer(self, key: str, size: int) -> list[dict]:
        """The findings of job ``key``, reading the answers before it (a worker answers in order)."""
        while key not in self.answers:
            got = _receive(self._results)
            if got is None:
                raise OSError(f"pycheck worker {self.pid} ended")
            self.answers[self.sent.pop(0)] = got  # type: ignore[assignment]
        self.load -= size
        return self.answers.pop(key)

    GRACE = 5.0  # seconds a worker has to end after its pipes close (one analysis takes well under one)

    def hang_up(self) -> None:
        """Close the pipes: the worker reads end-of-file and ends after the analysis under way."""
        import os

        for fd in (self._jobs, self._results):
            try:
                os.close(fd)
            except OSError:
                pass
        # -1: a later send or answer fails (OSError, analysed in vpatch) instead of using whatever file
        # the freed descriptor numbers are given next
        self._jobs = self._results = -1

    def reap(self, deadline: float) -> None:
        """Wait for the worker to end until ``deadline`` (time.monotonic), then kill it: a worker that does
        not end must not keep vpatch from finishing."""
        import os
        import signal
        import time

        while self.pid:
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
                if not done and time.monotonic() >= deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    done = self.pid
            except (ChildProcessError, ProcessLookupError):
                done = self.pid
            if done:
                self.pid = 0
            else:
                time.sleep(0.005)

    def close(self) -> None:
        import time

        self.hang_up()
        self.reap(time.monotonic() + self.GRACE)


def _bigger_pipe(fd: int) -> None:
    """A 1 MiB pipe where Linux allows it: a first apply sends ~1 MB of text, which then seldom waits."""
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass


def _serve(jobs: int, results: int) -> None:
    """A worker's life: keep only its pipes, then answer each job with its findings until the jobs end."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else map(str, range(3, 1024)):
        fd = int(name)
        if fd > 2 and fd not in (jobs, results):
            try:
                os.close(fd)
            except OSError:
                pass
    while True:
        pairs = _receive(jobs)
        if pairs is None:
            return
        try:
            found: list[dict] | None = pairs_findings(pairs)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - vpatch analyses it itself
            found = None
        _send(results, found)


class Background:
    """The checks of a run's commits, analysed beside it: what the cache answers is answered at once, the
    rest goes to forked worker processes (pyflakes over a large vLLM file costs tens of ms; a first apply
    analyses ~1 MB of text, ~0.3 s) while the run lays down the next entries; :meth:`result` waits for an
    entry's answer. The workers are forked when the run starts, before it starts any thread; on one core, in
    a process that already runs threads, or where a fork fails, the texts are analysed in this process."""

    WORKERS = 2
    WORKER_BYTES = 4_000  # below this pyflakes takes ~1 ms: sending it costs about as much

    def __init__(self, g, reader=None):
        self.g, self.reader = g, reader
        self._workers: list[_Worker] = self._fork()
        self._jobs: dict[str, tuple[list[Pair], list[dict] | tuple[_Worker, int]]] = {}

    def _fork(self) -> list[_Worker]:
        import os
        import threading

        if (os.cpu_count() or 1) < 2 or threading.active_count() > 1 or not hasattr(os, "fork"):
            return []
        workers = []
        try:
            for _ in range(self.WORKERS):
                workers.append(_Worker())
        except OSError:
            pass
        return workers

    def submit(self, eid: str, sha: str, touched: list[str] | None = None) -> None:
        pairs = commit_pairs(self.g, sha, self.reader, touched)
        done = cached_pairs_findings(pairs)
        if done is None:
            size = sum(len(a or b"") + len(b or b"") for _, b, a in pairs)
            if self._workers and size >= self.WORKER_BYTES:
                w = min(self._workers, key=lambda w: w.load)
                try:
                    w.send(eid, pairs, size)
                    self._jobs[eid] = (pairs, (w, size))
                    return
                except OSError:  # a worker that died: this one is analysed here
                    self._workers.remove(w)
                    w.close()
            done = pairs_findings(pairs)
        self._jobs[eid] = (pairs, done)

    def result(self, eid: str) -> list[dict]:
        pairs, job = self._jobs.pop(eid)
        if isinstance(job, list):
            return job
        w, size = job
        try:
            got = w.answer(eid, size)
        except OSError:  # a worker that died (killed, out of memory): analyse here
            got = None
        return pairs_findings(pairs) if got is None else got

    def close(self) -> None:
        """Stop the workers: they end once their job pipes close (after the analysis under way); one still
        alive :attr:`_Worker.GRACE` seconds later is killed."""
        import time

        for w in self._workers:
            w.hang_up()
        deadline = time.monotonic() + _Worker.GRACE
        for w in self._workers:
            w.reap(deadline)
        self._workers = []
