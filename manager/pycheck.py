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
def _exit_with_parent(parent: int) -> None:
    """A worker's initializer: end the worker once vpatch is gone. A pool's worker holds both ends of its
    task queue, so after a kill -9 of vpatch it would wait on that queue for ever."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, name="vpatch-parent-watch", daemon=True).start()


class Background:
    """The checks of a run's commits, analysed beside it: what the cache answers is answered at once, the
    rest goes to worker processes (pyflakes over a large vLLM file costs tens of ms, a first apply's largest
    cost) while the run lays down the next entries; :meth:`result` waits for an entry's answer. On one core
    (or where a pool cannot start) it is analysed in this process, as before."""

    WORKER_BYTES = 64_000  # ~20 ms of pyflakes here (a 1,500-line vLLM module)

    def __init__(self, g, reader=None):
        self.g, self.reader = g, reader
        self._pool = None
        self._jobs: dict[str, tuple[list[Pair], object]] = {}

    def submit(self, eid: str, sha: str, touched: list[str] | None = None) -> None:
        pairs = commit_pairs(self.g, sha, self.reader, touched)
        done = cached_pairs_findings(pairs)
        if done is None:
            # a worker costs a Python start (~0.1 s of a core): worth it only for texts pyflakes takes long over
            big = sum(len(a or b"") + len(b or b"") for _, b, a in pairs) >= self.WORKER_BYTES
            pool = self._start() if big else None
            done = pool.submit(pairs_findings, pairs) if pool is not None else pairs_findings(pairs)
        self._jobs[eid] = (pairs, done)

    def result(self, eid: str) -> list[dict]:
        pairs, job = self._jobs.pop(eid)
        if isinstance(job, list):
            return job
        try:
            return job.result()  # type: ignore[attr-defined]
        except Exception:  # a worker that died (killed, out of memory): analyse here
            return pairs_findings(pairs)

    def _start(self):
        import os

        if self._pool is None and (os.cpu_count() or 1) > 1:
            try:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                # spawned, not forked: a worker must not inherit this process's descriptors (the workspace
                # lock, the cat-file pipes), so a kill -9 of vpatch frees the lock at once and the workers,
                # whose task pipe then closes, end by themselves
                self._pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_exit_with_parent, initargs=(os.getpid(),))
            except (OSError, ValueError, ImportError):
                self._pool = False
        return self._pool or None

    def close(self) -> None:
        """Stop the workers (a stop, the end of the run, an error: waits for the one analysis under way)."""
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
