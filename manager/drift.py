"""``vpatch drift --from A --to B``: walk the upstream commits between two refs and say, per entry, which
commit first stops it applying cleanly and which commits touched its files and its hunks.

How it stays fast (index-only, no checkout, a handful of git processes for the whole range):

1. one ``git log --raw`` over ``A..B`` limited to the series' paths gives, for every commit, the blobs those
   paths hold; a check's outcome depends only on them (and on upstream patch-ids), so commits that touch none
   of them share the outcome of the commit before (the :class:`~.upstream.Checker` memoises on them);
2. the first commit where an entry stops applying cleanly is found by binary search over the *touch points*
   (commits that changed one of the series' paths or carry an entry's patch-id) with index-only checks:
   O(log n) checks. ``--exhaustive`` checks every touch point instead and lists every transition (a change
   can break an entry and a later one fix it; binary search assumes it stays broken);
3. one ``git log -p -U0`` over the entries' files follows each hunk's line range through the history, so the
   commits that changed lines inside an entry's hunks (context included) are named, not only those that
   touched the file.

The history is walked along first parents (``--first-parent``), the way a release branch moves.
"""
from __future__ import annotations

import re
import time
from bisect import bisect_right
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from .git import Git
from .series import Series, merged_at_or_before
from .upstream import Checker, EntryDiff, Scratch, State, first_hits, load_entry_diffs, upstream_patch_ids

CLEAN = ("clean",)
BROKEN = ("conflict", "obsolete", "error")


@dataclass
class History:
    """The commits of ``from..to`` (first parents, oldest first) and what they do to the series' paths."""

    commits: list[str]
    subjects: dict[str, str]
    base_state: dict[str, tuple[str, str]]                 # path -> (mode, blob) at `from`
    changes: dict[int, dict[str, tuple[str, str] | None]]  # commit index -> path -> (mode, blob) | None (deleted)
    touch_points: list[int] = field(default_factory=list)  # indices where the series' state changes
    states: dict[int, State] = field(default_factory=dict) # touch point (-1: `from`) -> state

    def state_at(self, i: int) -> tuple[int, State]:
        """The touch point that holds commit ``i``'s state (``-1``: ``from``), and the state."""
        k = bisect_right(self.touch_points, i) - 1
        tp = self.touch_points[k] if k >= 0 else -1
        return tp, self.states[tp]


def read_history(g: Git, frm: str, to: str, paths: list[str], extra_points: AbstractSet[int] = frozenset()) -> History:
    commits = g.run("rev-list", "--first-parent", "--reverse", f"{frm}..{to}").out.split()
    pos = {c: i for i, c in enumerate(commits)}
    subjects = {}
    for line in g.run("log", "--first-parent", "--format=%H %s", f"{frm}..{to}").out.splitlines():
        sha, _, subj = line.partition(" ")
        subjects[sha] = subj
    base = {}
    if paths:
        out = g.run("ls-tree", "-r", "-z", "--full-tree", frm, "--", *paths, strip=False).out
        for rec in out.split("\0"):
            if rec:
                meta, path = rec.split("\t", 1)
                mode, typ, blob = meta.split()
                if typ == "blob":
                    base[path] = (mode, blob)
    changes: dict[int, dict] = {}
    if paths and commits:
        raw = g.run("log", "--first-parent", "--raw", "--no-renames", "--no-abbrev", "-z", "--format=%x01%H",
                    f"{frm}..{to}", "--", *paths, strip=False).out
        for chunk in raw.split("\x01"):
            if not chunk.strip("\0\n"):
                continue
            sha, _, rest = chunk.partition("\0")
            parts = rest.lstrip("\n").split("\0")
            ch = {}
            for j in range(0, len(parts) - 1, 2):
                meta, path = parts[j], parts[j + 1]
                if not meta.startswith(":"):
                    continue
                _, new_mode, _, new_blob, st = meta[1:].split()
                ch[path] = None if st.startswith("D") else (new_mode, new_blob)
            if sha in pos:
                changes[pos[sha]] = ch
    h = History(commits, subjects, base, changes)
    h.touch_points = sorted(set(changes) | set(extra_points))
    cur = dict(base)
    h.states[-1] = tuple(sorted((p, m, b) for p, (m, b) in cur.items()))
    for i in h.touch_points:
        for p, v in changes.get(i, {}).items():
            if v is None:
                cur.pop(p, None)
            else:
                cur[p] = v
        h.states[i] = tuple(sorted((p, m, b) for p, (m, b) in cur.items()))
    return h


# --- hunks through history ------------------------------------------------------------------------------

def _shift(ranges: list[list[int]], up_hunks: list[tuple[int, int, int, int]]) -> tuple[list[list[int]], list[int]]:
    """Move line ranges (old numbering) through one upstream diff; return the new ranges and which were touched.

    ``up_hunks``: (a, b, c, d) of each ``@@ -a,b +c,d @@`` of a ``-U0`` diff (pure)."""
    out, touched = [], []
    for k, (s, e) in enumerate(ranges):
        shift_s = shift_e = 0
        hit = False
        for a, b, _c, d in up_hunks:
            if b == 0:  # pure insertion after line a
                if a < s:
                    shift_s += d
                    shift_e += d
                elif a < e:
                    hit = True
                    shift_e += d
            else:
                last = a + b - 1
                if last < s:
                    shift_s += d - b
                    shift_e += d - b
                elif a <= e:
                    hit = True
                    shift_e += d - b
        ns, ne = max(1, s + shift_s), max(1, e + shift_e)
        out.append([ns, max(ns, ne)])
        if hit:
            touched.append(k)
    return out, touched


def hunk_touches(g: Git, frm: str, to: str, diffs: list[EntryDiff]) -> dict[str, list[dict]]:
    """entry id -> [{commit, hunks: [labels]}] of the upstream commits that changed lines inside its hunks."""
    files: dict[str, list[tuple[str, int, list[int]]]] = {}
    for d in diffs:
        for f in d.files:
            if not f.old_path:
                continue
            for i, h in enumerate(f.hunks):
                if h.old_len == 0 and h.old_start == 0:
                    continue
                files.setdefault(f.old_path, []).append((d.id, i, [h.old_start, h.old_start + max(h.old_len, 1) - 1]))
    res: dict[str, list[dict]] = {d.id: [] for d in diffs}
    if not files:
        return res
    log = g.run("log", "--first-parent", "--reverse", "-p", "-U0", "--no-renames", "--format=%x01%H",
                f"{frm}..{to}", "--", *sorted(files), strip=False).out
    ranges = {(eid, i): r for path, rows in files.items() for eid, i, r in rows}
    labels = {(d.id, i): f"{f.old_path}:{h.old_start}" for d in diffs for f in d.files for i, h in enumerate(f.hunks)}
    for chunk in log.split("\x01"):
        if not chunk.strip():
            continue
        sha, _, body = chunk.partition("\n")
        per_file: dict[str, list[tuple[int, int, int, int]]] = {}
        cur = None
        for line in body.splitlines():
            if line.startswith("diff --git "):
                m = re.match(r"^diff --git a/(.+) b/(.+)$", line)
                cur = m.group(1) if m else None
                if cur is not None:
                    per_file.setdefault(cur, [])
            elif line.startswith("@@ ") and cur is not None:
                m = re.match(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", line)
                assert m is not None, line  # git writes every hunk header so
                a, b, c, dd = (int(x) if x is not None else 1 for x in m.groups())
                per_file[cur].append((a, b, c, dd))
        hit: dict[str, list[str]] = {}
        for path, ups in per_file.items():
            rows = files.get(path)
            if not rows:
                continue
            keys = [(eid, i) for eid, i, _ in rows]
            new, touched = _shift([ranges[k] for k in keys], ups)
            for k, r in zip(keys, new, strict=True):
                ranges[k] = r
            for t in touched:
                eid, i = keys[t]
                hit.setdefault(eid, []).append(labels[(eid, i)])
        for eid, hs in hit.items():
            res[eid].append({"commit": sha.strip(), "hunks": hs})
    return res


# --- the scan ------------------------------------------------------------------------------------------

class Scan:
    """Index-only checks of a series along an upstream range, memoised on the series' blobs."""

    def __init__(self, g: Git, series: Series, frm: str, to: str, memo: bool = True, from_name: str | None = None):
        self.g = g
        self.frm, self.to = frm, to
        # entries recorded merged at or before `from` are not part of the stack being moved
        name = from_name or frm
        self.entries = tuple(e for e in series.entries if not merged_at_or_before(e, name))
        self.declared = [e.id for e in series.entries if merged_at_or_before(e, name)]
        self.diffs = load_entry_diffs(series, g, self.entries)
        self.checker = Checker(g, self.diffs, detail=False)
        self.memo = memo
        ids = upstream_patch_ids(g, f"{frm}..{to}", self.diffs)
        hits = first_hits(ids, self.diffs)
        self.history = read_history(g, frm, to, self.checker.paths)
        pos = {c: i for i, c in enumerate(self.history.commits)}
        self.hit_pos = {eid: pos[c] for eid, c in hits.items() if c in pos}
        if self.hit_pos:  # a patch-id match changes the outcome too: make it a touch point
            self.history = read_history(g, frm, to, self.checker.paths, set(self.hit_pos.values()))
        self.checker.base_blobs = {p: b for p, (m, b) in self.history.base_state.items()}
        self.probes = 0

    def close(self) -> None:
        self.checker.close()

    def commit(self, i: int) -> str:
        return self.frm if i < 0 else self.history.commits[i]

    def results_at(self, i: int):
        """Every entry's result at commit index ``i`` (``-1``: ``from``)."""
        self.probes += 1
        if self.memo:
            _, state = self.history.state_at(i)
        else:  # no shortcut: read the commit's blobs from git and check from scratch
            state = self.checker.state_of(self.commit(i))
            self.checker.memo.clear()
        hits = {eid: self.history.commits[p] for eid, p in self.hit_pos.items() if p <= i}
        return self.checker.check(state, upstream_hits=hits)

    def status(self, i: int, eid: str) -> str:
        for r in self.results_at(i):
            if r.id == eid:
                return r.status
        raise KeyError(eid)

    def first(self, eid: str, bad: tuple[str, ...] | None = None, exhaustive: bool = False) -> int | None:
        """Index of the first commit where ``eid``'s status is not clean (or is in ``bad``); None if never."""
        is_bad = (lambda s: s in bad) if bad else (lambda s: s not in CLEAN)
        if is_bad(self.status(-1, eid)):
            return -1  # not clean at `from` already
        pts = self.history.touch_points
        if exhaustive:
            for tp in pts:
                if is_bad(self.status(tp, eid)):
                    return tp
            return None
        if not pts or not is_bad(self.status(pts[-1], eid)):
            return None
        lo, hi = -1, len(pts) - 1  # pts[hi] is bad; pts[lo] (or `from`) taken as good
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if is_bad(self.status(pts[mid], eid)):
                hi = mid
            else:
                lo = mid
        return pts[hi]

    def transitions(self, eid: str) -> list[dict]:
        """Every change of ``eid``'s status along the touch points (exhaustive)."""
        out, prev = [], self.status(-1, eid)
        for tp in self.history.touch_points:
            s = self.status(tp, eid)
            if s != prev:
                out.append({"commit": self.commit(tp), "index": tp, "from": prev, "to": s})
                prev = s
        return out


def drift(series: Series, source, frm: str, to: str, *, exhaustive: bool = False, progress=None) -> dict:
    started = time.monotonic()
    if progress:
        progress(f"{frm}..{to} from {source.describe()}")
    walked = None
    if hasattr(source, "walk"):  # pypi: every release in the range, chained in version order
        walked = source.walk(frm, to, progress=progress)
        frm_sha, to_sha = walked["from_commit"], walked["to_commit"]
    else:
        frm_sha, to_sha = source.ensure(frm), source.ensure(to)
    with Scratch(source.repo()) as scratch:
        g = scratch.git
        if not g.run("merge-base", "--is-ancestor", frm_sha, to_sha, check=False).ok:
            from .errors import VpatchError
            raise VpatchError(f"{frm} is not an ancestor of {to}: there is no upstream range to walk",
                              "pass --from an older ref on the same history")
        scan = Scan(g, series, frm_sha, to_sha, from_name=frm)
        try:
            h = scan.history
            touches = hunk_touches(g, frm_sha, to_sha, scan.diffs)
            at_from = {r.id: r for r in scan.results_at(-1)}
            at_to = {r.id: r for r in scan.results_at(len(h.commits) - 1)} if h.commits else at_from
            entries = []
            for d in scan.diffs:
                paths = set(d.paths)
                file_commits = [h.commits[i] for i, ch in sorted(h.changes.items()) if paths & set(ch)]
                row = {"id": d.id, "kind": d.kind, "at_from": at_from[d.id].status, "at_to": at_to[d.id].status,
                       "detail_at_to": at_to[d.id].detail, "files": d.paths,
                       "touched_files": [{"commit": c, "subject": h.subjects.get(c, "")} for c in file_commits],
                       "touched_hunks": [{**t, "subject": h.subjects.get(t["commit"], "")} for t in touches.get(d.id, [])]}
                if at_to[d.id].how:
                    row["how_at_to"] = at_to[d.id].how
                for key, bad in (("breaks_at", None), ("conflicts_at", BROKEN)):
                    i = scan.first(d.id, bad, exhaustive=exhaustive)
                    if i is None:
                        row[key] = None
                    else:
                        r = next(x for x in scan.results_at(i) if x.id == d.id)
                        c = scan.commit(i)
                        row[key] = {"commit": c, "index": i, "subject": h.subjects.get(c, "(the --from ref itself)"),
                                    "status": r.status, "detail": r.detail, **({"how": r.how} if r.how else {})}
                if exhaustive:
                    row["transitions"] = scan.transitions(d.id)
                entries.append(row)
            return {"from": frm, "to": to, "from_commit": frm_sha, "to_commit": to_sha, "source": source.describe(),
                    "commits": len(h.commits), "touch_points": len(h.touch_points), "checks_run": scan.checker.runs,
                    "probes": scan.probes, "exhaustive": exhaustive, "declared_merged": scan.declared,
                    "entries": entries, "scan_s": round(time.monotonic() - started, 3),
                    **({"releases": walked["releases"], "note": walked["note"]} if walked else {})}
        finally:
            scan.close()
