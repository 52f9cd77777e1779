"""What happens to the series on another upstream ref — answered on temporary indexes, never a checkout.

``vpatch check --onto REF`` classifies every entry, in series order and cumulatively (entry k is tried on
REF's tree plus the entries before it that apply):

- ``clean``            — ``git apply --cached`` applies it as it is;
- ``3-way``            — it applies only by a 3-way merge (its context moved; ``git apply --3way``);
- ``conflict``         — neither: the files and hunks in conflict are reported;
- ``already-upstream`` — REF already holds the change; ``how`` says how it was found:
  ``patch-id`` (an upstream commit in base..REF carries the same change, like ``git cherry``, with the diff
  limited to the entry's files), ``reverse-apply`` (the patch reverse-applies cleanly), ``3-way-noop``
  (merging it changes nothing: upstream made the same edit with other context), ``content`` (an overlay's
  files are already there as they are) or ``declared`` (series.toml says ``merged`` at or before REF);
- ``obsolete``         — every file it changes is gone from REF (renames are named in the detail).

Everything runs on a *sparse* temporary index (``GIT_INDEX_FILE``) that holds only the paths the series
touches, in a scratch bare repository whose object store borrows the source's (``objects/info/alternates``),
so nothing in the source, the workspace or any checkout is touched, and one check costs a handful of git
processes whatever the size of vLLM. The outcome of a check depends only on the blobs at those paths (and on
the upstream commits' patch-ids), so :class:`Checker` memoises on them: the drift scan over thousands of
commits re-checks only where one of those blobs changed.
"""
from __future__ import annotations

import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from .entries import parse_patch
from .git import Git, Scratch
from .pycheck import blob_findings
from .series import Entry, Series, merged_at_or_before
from .workspace import overlay_files

OK_STATUSES = ("clean", "3-way", "already-upstream")
NEEDS_HUMAN = ("conflict", "obsolete", "applies-but-no-effect")
ZERO = "0" * 40


# --- the entries' diffs, parsed once ----------------------------------------------------------------

@dataclass
class Hunk:
    path: str
    header: str      # the "@@ -a,b +c,d @@ ..." line
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    text: str        # the hunk, header included

    @property
    def label(self) -> str:
        return f"{self.path}:{self.old_start}" + (f" ({self.header.split('@@', 2)[-1].strip()})"
                                                    if self.header.split("@@", 2)[-1].strip() else "")


@dataclass
class FilePatch:
    old_path: str | None   # None when the patch creates the file
    new_path: str | None   # None when the patch deletes it
    head: str              # "diff --git ..." up to the first hunk
    hunks: list[Hunk] = field(default_factory=list)
    binary: bool = False

    @property
    def paths(self) -> list[str]:
        return sorted({p for p in (self.old_path, self.new_path) if p})


HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def split_diff(diff: str) -> list[FilePatch]:
    """A git diff split into files and hunks (pure)."""
    files: list[FilePatch] = []
    cur: FilePatch | None = None
    hunk: list[str] | None = None

    def close_hunk():
        nonlocal hunk
        if cur is not None and hunk:
            m = HUNK_RE.match(hunk[0])
            a, b, c, d = (int(x) if x is not None else 1 for x in m.groups())
            path = cur.old_path or cur.new_path or "?"
            cur.hunks.append(Hunk(path, hunk[0], a, b, c, d, "\n".join(hunk) + "\n"))
        hunk = None

    for line in diff.splitlines():
        if line.startswith("diff --git "):
            close_hunk()
            m = re.match(r"^diff --git a/(.+) b/(.+)$", line)
            a, b = (m.group(1), m.group(2)) if m else ("?", "?")
            cur = FilePatch(a, b, line + "\n")
            files.append(cur)
            continue
        if cur is None:
            continue
        if hunk is None and not line.startswith("@@ "):
            cur.head += line + "\n"
            if line.startswith("new file mode"):
                cur.old_path = None
            elif line.startswith("deleted file mode"):
                cur.new_path = None
            elif line.startswith("rename from "):
                cur.old_path = line[len("rename from "):]
            elif line.startswith("rename to "):
                cur.new_path = line[len("rename to "):]
            elif line.startswith(("Binary files", "GIT binary patch")):
                cur.binary = True
            elif line.startswith("--- /dev/null"):
                cur.old_path = None
            elif line.startswith("+++ /dev/null"):
                cur.new_path = None
            continue
        if line.startswith("@@ "):
            close_hunk()
            hunk = [line]
        elif hunk is not None and line.startswith("-- ") and line.strip() == "--":
            close_hunk()  # format-patch signature
        elif hunk is not None:
            hunk.append(line)
    close_hunk()
    return files


@dataclass
class EntryDiff:
    """One entry as the checker needs it."""

    id: str
    kind: str
    title: str
    entry: Entry
    diff: str = ""                                   # patch entries
    files: list[FilePatch] = field(default_factory=list)
    overlay: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (mode, blob) for overlays
    patch_id: str | None = None
    error: str | None = None                         # why it cannot be checked (e.g. its patch file is missing)

    @property
    def paths(self) -> list[str]:
        if self.kind == "overlay":
            return sorted(self.overlay)
        return sorted({p for f in self.files for p in f.paths})

    @property
    def preimage_paths(self) -> list[str]:
        """Paths that must exist for the patch to apply (modified, deleted or renamed away)."""
        return sorted({f.old_path for f in self.files if f.old_path})

    @property
    def hunks(self) -> list[Hunk]:
        return [h for f in self.files for h in f.hunks]


def load_entry_diffs(series: Series, g: Git, entries: tuple[Entry, ...] | None = None) -> list[EntryDiff]:
    """Parse every entry's patch (``git mailinfo``) or hash its overlay files into ``g``'s object store."""
    patches_dir = series.path.resolve().parent
    overlay_root = patches_dir.parent / "overlay"
    out = []
    for e in entries if entries is not None else series.entries:
        d = EntryDiff(e.id, e.kind, e.title, e)
        if e.kind == "patch":
            f = patches_dir / e.patch_file
            if not f.exists():
                d.error = f"patch file {f.name} is missing"
            else:
                info = parse_patch(f, g)
                d.diff = info.diff
                d.files = split_diff(info.diff)
                d.patch_id = g.patch_id(info.diff) if info.diff.strip() else None
                if not d.files:
                    d.error = "the patch holds no diff"
        else:
            files = overlay_files(overlay_root, e.id) if (overlay_root / e.id).is_dir() else []
            if not files:
                d.error = f"overlay/{e.id}/ is missing or empty"
            else:
                blobs = g.run("hash-object", "-w", "--stdin-paths", input="\n".join(str(p) for _, p in files)).out.split()
                for (rel, p), blob in zip(files, blobs, strict=False):
                    mode = "100755" if p.stat().st_mode & stat.S_IXUSR else "100644"
                    d.overlay[rel] = (mode, blob)
        out.append(d)
    return out


# --- the scratch repository ---------------------------------------------------------------------

# --- the checker ------------------------------------------------------------------------------------

@dataclass
class EntryResult:
    id: str
    status: str                     # clean | 3-way | conflict | already-upstream | obsolete | error | applies-but-no-effect
    how: str | None = None          # for already-upstream
    detail: str = ""
    files: list[str] = field(default_factory=list)
    hunks: list[dict] = field(default_factory=list)       # per hunk, for conflicts
    conflicts: list[dict] = field(default_factory=list)   # {file, regions: [[start, end], ...]}
    commit: str | None = None       # the upstream commit whose patch-id matches
    checks: list[dict] | None = None
    pycheck: list[dict] | None = None   # broken Python the entry's merge left (manager/pycheck.py)

    def as_dict(self) -> dict:
        d: dict[str, Any] = {"id": self.id, "status": self.status, "detail": self.detail, "files": self.files}
        if self.how:
            d["how"] = self.how
        if self.hunks:
            d["hunks"] = self.hunks
        if self.conflicts:
            d["conflicts"] = self.conflicts
        if self.commit:
            d["commit"] = self.commit
        if self.checks is not None:
            d["checks"] = self.checks
        if self.pycheck:
            d["pycheck"] = self.pycheck
        return d


State = tuple[tuple[str, str, str], ...]  # ((path, mode, blob), ...) of the series' paths that exist


class Checker:
    """Index-only classification of a series' entries on any tree of ``git``'s object store."""

    def __init__(self, git: Git, diffs: list[EntryDiff], base: str | None = None, detail: bool = True):
        self.git = git
        self.detail = detail  # per-hunk states and conflict regions (a few processes per hunk): off for scans
        self.diffs = diffs
        self.base = base  # the series' base: entries declared merged at or before a ref are compared to it
        self.paths = sorted({p for d in diffs for p in d.paths})
        self.tmp = Path(tempfile.mkdtemp(prefix="vpatch-idx-"))
        self.index = self.tmp / "index"
        self.env = {"GIT_INDEX_FILE": str(self.index)}
        self._files: dict[str, Path] = {}
        self.memo: dict[tuple, list[EntryResult]] = {}
        self._left: dict[str, str] = {}  # path -> earlier entry left out of the stack (conflict, ...)
        self.runs = 0  # checks actually run (not memoised)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # small helpers
    def _file(self, name: str, text: str) -> str:
        p = self._files.get(name)
        if p is None:
            p = self.tmp / f"{len(self._files)}.diff"
            p.write_text(text, errors="surrogateescape")
            self._files[name] = p
        return str(p)

    def _git(self, *args: str, **kw):
        return self.git.run(*args, env=self.env, check=False, **kw)

    def state_of(self, ref: str) -> State:
        """The blobs at the series' paths in ``ref``'s tree."""
        if not self.paths:
            return ()
        out = self.git.run("ls-tree", "-r", "-z", "--full-tree", ref, "--", *self.paths, strip=False).out
        rows = []
        for rec in out.split("\0"):
            if not rec:
                continue
            meta, path = rec.split("\t", 1)
            mode, typ, blob = meta.split()
            if typ == "blob":
                rows.append((path, mode, blob))
        return tuple(sorted(rows))

    def _load(self, state: State) -> None:
        if self.index.exists():
            self.index.unlink()
        info = "".join(f"{mode} {blob}\t{path}\n" for path, mode, blob in state)
        self.git.run("update-index", "--add", "--index-info", env=self.env, input=info)

    def _blobs(self, paths: list[str]) -> dict[str, str]:
        """path -> blob in the temporary index (stage 0) of ``paths``."""
        if not paths:
            return {}
        out = self._git("ls-files", "-s", "-z", "--", *paths, strip=False).out
        res = {}
        for rec in out.split("\0"):
            if rec:
                meta, path = rec.split("\t", 1)
                mode, blob, stage = meta.split()
                if stage == "0":
                    res[path] = blob
        return res

    def _ls(self) -> dict[str, tuple[str, str, int]]:
        out = self._git("ls-files", "-s", "-z", strip=False).out
        res: dict[str, tuple[str, str, int]] = {}
        for rec in out.split("\0"):
            if rec:
                meta, path = rec.split("\t", 1)
                mode, blob, stage = meta.split()
                res.setdefault(path, (mode, blob, int(stage)))
                if int(stage):
                    res[path] = (mode, blob, int(stage))
        return res

    def check(self, state: State, *, upstream_hits: dict[str, str] | None = None, ref: str | None = None,
              renames: dict[str, str] | None = None) -> list[EntryResult]:
        """Classify every entry on the tree whose series paths hold ``state`` (memoised).

        ``upstream_hits``: entry id -> upstream commit whose (path-limited) patch-id equals the entry's.
        ``ref``: the ref checked, for entries declared merged; ``renames``: old path -> new path upstream."""
        hits = upstream_hits or {}
        key = (state, tuple(sorted(hits.items())), ref)
        if key in self.memo:
            return self.memo[key]
        self.runs += 1
        self._load(state)
        results, self._left = [], {}
        for d in self.diffs:
            py = [p for p in d.paths if p.endswith(".py")] if self.detail else []
            before = self._blobs(py)
            r = self._classify(d, hits, ref, renames or {})
            if py and r.status in ("clean", "3-way"):  # broken Python the merge left (manager/pycheck.py)
                r.pycheck = blob_findings(self.git, before, self._blobs(py)) or None
            if r.status in ("conflict", "obsolete", "error"):
                for p in d.paths:  # later entries on these files are checked without this one
                    self._left.setdefault(p, d.id)
            results.append(r)
        self.memo[key] = results
        return results

    def final_state(self) -> State:
        """The series paths after the last :meth:`check` (what the moved series holds there)."""
        return tuple(sorted((p, m, b) for p, (m, b, s) in self._ls().items() if s == 0))

    # one entry
    def _classify(self, d: EntryDiff, hits: dict[str, str], ref: str | None, renames: dict[str, str]) -> EntryResult:
        r = EntryResult(d.id, "clean", files=d.paths)
        if ref is not None and merged_at_or_before(d.entry, ref):
            r.status, r.how = "already-upstream", "declared"
            r.detail = f"series.toml records it merged upstream in {d.entry.upstream.version}"
            return r
        if d.error:
            r.status, r.detail = "error", d.error
            return r
        if d.id in hits:
            r.status, r.how, r.commit = "already-upstream", "patch-id", hits[d.id]
            r.detail = f"upstream commit {hits[d.id][:12]} makes the same change (same patch-id on these files)"
            return r
        if d.kind == "overlay":
            return self._overlay(d, r)
        diff_file = self._file(d.id, d.diff)
        if self._git("apply", "--cached", "--whitespace=nowarn", diff_file).ok:
            return r
        present = self._ls()
        deps = sorted({self._left[p] for p in d.paths if p in self._left})
        missing = [p for p in d.preimage_paths if p not in present and p not in self._left]
        if missing and len(missing) == len(d.preimage_paths):
            r.status = "obsolete"
            moved = [f"{p} -> {renames[p]}" for p in missing if p in renames]
            r.detail = "the files it changes are gone: " + ", ".join(missing) + \
                       (f" (renamed upstream: {'; '.join(moved)})" if moved else "")
            return r
        if self._git("apply", "--cached", "--check", "--reverse", diff_file).ok:
            r.status, r.how = "already-upstream", "reverse-apply"
            r.detail = "its change is already in the tree (the patch reverse-applies cleanly)"
            return r
        before = self.index.read_bytes()
        tree_before = self._git("write-tree").out
        three = self._git("apply", "--cached", "--3way", "--whitespace=nowarn", diff_file)
        unmerged = {p for p, (_, _, s) in self._ls().items() if s}
        if three.ok and not unmerged:
            if self._git("write-tree").out == tree_before:
                r.status, r.how = "already-upstream", "3-way-noop"
                r.detail = "a 3-way merge of it changes nothing: upstream made the same change"
            else:
                r.status = "3-way"
                r.detail = "applies only by 3-way merge (its context moved)"
            return r
        # a conflict: report it, and leave the entry out of the stack for the entries after it
        r.status = "conflict"
        if unmerged:
            if self.detail:
                r.conflicts = [self._regions(p) for p in sorted(unmerged)]
            r.detail = "3-way merge conflicts in " + ", ".join(sorted(unmerged))
        else:
            why = (three.err.splitlines() or ["?"])[-1]
            r.detail = f"does not apply and no 3-way merge is possible ({why})"
        if missing:
            r.detail += "; files gone upstream: " + ", ".join(missing)
        if deps:
            r.detail += f"; it builds on {', '.join(deps)}, left out above (checked without it)"
        self.index.write_bytes(before)
        if not self.detail:
            r.files = sorted(unmerged) or d.paths
            return r
        r.hunks = self._hunks(d)
        r.files = sorted({h["file"] for h in r.hunks if h["state"] != "applies"} | set(unmerged)) or d.paths
        return r

    def _hunks(self, d: EntryDiff) -> list[dict]:
        """Each hunk alone against the tree: ``applies`` | ``already-there`` | ``fails``."""
        res = []
        for f in d.files:
            for i, h in enumerate(f.hunks):
                text = f.head + h.text
                p = self._file(f"{d.id}#{f.new_path or f.old_path}#{i}", text)
                if self._git("apply", "--cached", "--check", "--whitespace=nowarn", p).ok:
                    state = "applies"
                elif self._git("apply", "--cached", "--check", "--reverse", p).ok:
                    state = "already-there"
                else:
                    state = "fails"
                res.append({"file": h.path, "hunk": h.header, "old_start": h.old_start, "old_len": h.old_len,
                            "state": state})
        return res

    def _regions(self, path: str) -> dict:
        """Conflict regions (line ranges in the merged file) of an unmerged path, by ``git merge-file``."""
        out = self._git("ls-files", "-s", "-z", "--", path, strip=False).out
        stages = {}
        for rec in out.split("\0"):
            if rec:
                meta, _ = rec.split("\t", 1)
                mode, blob, stage = meta.split()
                stages[int(stage)] = blob
        if not all(s in stages for s in (1, 2, 3)):
            return {"file": path, "regions": [], "detail": "added or deleted on one side"}
        names = []
        for s in (2, 1, 3):
            p = self.tmp / f"stage{s}"
            p.write_bytes(self.git.run_bytes("cat-file", "blob", stages[s]))
            names.append(str(p))
        # exit status = number of conflicts: not an error here
        merged = self.git.run("merge-file", "-p", "-L", "upstream", "-L", "base", "-L", "entry", *names,
                              check=False, strip=False).out
        regions, start = [], None
        for i, line in enumerate(merged.splitlines(), 1):
            if line.startswith("<<<<<<< "):
                start = i
            elif line.startswith(">>>>>>> ") and start is not None:
                regions.append([start, i])
                start = None
        return {"file": path, "regions": regions}

    def _overlay(self, d: EntryDiff, r: EntryResult) -> EntryResult:
        present = self._ls()
        same = [p for p, (m, b) in d.overlay.items() if present.get(p, (None, None, 0))[:2] == (m, b)]
        if len(same) == len(d.overlay):
            r.status, r.how = "already-upstream", "content"
            r.detail = "every overlay file is already in the tree as it is"
            return r
        base = self.base_blobs
        clobbered = [p for p in d.overlay if p in present and p not in same and base is not None
                     and base.get(p) != present[p][1]]
        info = "".join(f"{m} {b}\t{p}\n" for p, (m, b) in d.overlay.items())
        self.git.run("update-index", "--add", "--index-info", env=self.env, input=info)
        if clobbered:
            r.status = "conflict"
            r.files = clobbered
            r.detail = ("upstream changed files this overlay replaces whole (its copy would undo upstream's "
                        "change): " + ", ".join(clobbered))
        return r

    # path -> blob at the series' base: an overlay file that upstream changed since is reported as a conflict
    base_blobs: dict[str, str] | None = None


# --- upstream commits: patch-ids, renames, changed paths ----------------------------------------------

def upstream_patch_ids(g: Git, rev_range: str, diffs: list[EntryDiff]) -> dict[str, list[tuple[str, str]]]:
    """entry id -> [(commit, patch-id of the commit's diff limited to the entry's files)], oldest first."""
    res: dict[str, list[tuple[str, str]]] = {}
    for d in diffs:
        if d.kind != "patch" or not d.paths or d.patch_id is None:
            continue
        log = g.run_bytes("log", "-p", "--no-merges", "--reverse", "--first-parent", "--no-renames",
                          "--format=commit %H", rev_range, "--", *d.paths)
        if not log.strip():
            res[d.id] = []
            continue
        out = g.run("patch-id", "--stable", input=log, check=False, strip=False).out
        res[d.id] = [(c, pid) for pid, c in (line.split() for line in out.splitlines() if line.strip())]
    return res


def first_hits(ids: dict[str, list[tuple[str, str]]], diffs: list[EntryDiff]) -> dict[str, str]:
    """entry id -> the first upstream commit whose patch-id equals the entry's."""
    want = {d.id: d.patch_id for d in diffs}
    out = {}
    for eid, rows in ids.items():
        for c, pid in rows:
            if pid == want.get(eid):
                out[eid] = c
                break
    return out


def renames_between(g: Git, a: str, b: str, paths: list[str]) -> dict[str, str]:
    if not paths:
        return {}
    out = g.run("diff", "--name-status", "-M", "-z", a, b, strip=False).out.split("\0")
    res, i = {}, 0
    wanted = set(paths)
    while i < len(out) and out[i]:
        st = out[i]
        if st.startswith(("R", "C")):
            if out[i + 1] in wanted:
                res[out[i + 1]] = out[i + 2]
            i += 3
        else:
            i += 2
    return res


def changed_paths(g: Git, a: str, b: str, paths: list[str]) -> frozenset[str]:
    if not paths:
        return frozenset()
    out = g.run("diff", "--name-only", "-z", "--no-renames", a, b, "--", *paths, strip=False).out
    return frozenset(p for p in out.split("\0") if p)


# --- `vpatch check --onto REF` ------------------------------------------------------------------------

def check_series(series: Series, source, onto: str, *, base: str | None = None, progress=None,
                 then=None) -> dict:
    """Classify every entry of ``series`` on ``onto`` (index-only). ``source``: a :class:`Source`.
    ``then(data)``, if given, runs while the scratch repository still exists, with ``data["tree"]`` (the
    moved series' full tree) and ``data["_repo"]`` (the repository holding it)."""
    base = base or series.base
    if progress:
        progress(f"{onto} and {base} from {source.describe()}")
    onto_sha = source.ensure(onto)
    try:
        base_sha = source.ensure(base)
    except Exception:  # the base may be gone from a mirror: patch-ids and renames are then not looked for
        base_sha = None
    with Scratch(source.repo()) as scratch:
        g = scratch.git
        diffs = load_entry_diffs(series, g)
        checker = Checker(g, diffs, base)
        try:
            hits, renames = {}, {}
            tip = onto_sha
            if base_sha and source.kind == "pypi":  # releases are root commits: one step from base to onto
                tip = g.run("commit-tree", g.tree_of(onto_sha), "-p", base_sha, "-m", f"{base}..{onto}").out
            if base_sha and g.run("merge-base", "--is-ancestor", base_sha, tip, check=False).ok:
                hits = first_hits(upstream_patch_ids(g, f"{base_sha}..{tip}", diffs), diffs)
            if base_sha:
                renames = renames_between(g, base_sha, onto_sha, checker.paths)
                checker.base_blobs = {p: b for p, _, b in checker.state_of(base_sha)}
            results = checker.check(checker.state_of(onto_sha), upstream_hits=hits, ref=onto, renames=renames)
            data = {"onto": onto, "onto_commit": onto_sha, "base": base, "base_commit": base_sha,
                    "source": source.describe(), "entries": [r.as_dict() for r in results]}
            if then is not None:
                data["tree"] = materialize(g, onto_sha, checker)
                data["_repo"] = str(scratch.path)
                then(data)
                data.pop("_repo", None)
            return data
        finally:
            checker.close()


def materialize(g: Git, ref: str, checker: Checker) -> str:
    """The full tree of ``ref`` with the series as the last check left it (written to ``g``)."""
    final = {p: (m, b) for p, m, b in checker.final_state()}
    with tempfile.TemporaryDirectory(prefix="vpatch-full-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        g.run("read-tree", ref, env=env)
        info = "".join(f"{final[p][0]} {final[p][1]}\t{p}\n" if p in final else f"0 {ZERO}\t{p}\n"
                       for p in checker.paths)
        g.run("update-index", "--index-info", env=env, input=info)
        return g.run("write-tree", env=env).out


def summarize(entries: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    return counts


def exit_status(entries: list[dict]) -> int:
    """0: nothing needs a human; 1: a conflict, an obsolete entry or an entry with no effect (also one found
    upstream whose effect check fails there, or one whose merge leaves broken Python); 2: an entry
    could not be checked (e.g. its patch file is missing), so the answer is incomplete."""
    statuses = {e["status"] for e in entries}
    if "error" in statuses:
        return 2
    if statuses & set(NEEDS_HUMAN) or any(e.get("effect") == "missing" or e.get("pycheck") for e in entries):
        return 1
    return 0


def effect_checks(series: Series, data: dict, python: str | None = None, ctx=None, timeout: int = 900) -> None:
    """Run the entries' effect checks on the moved series (``data["tree"]``), through
    :func:`.verify.verify_tree`: the tree's ``vllm/`` first on ``PYTHONPATH`` of ``python``, by default the
    workspace's runtime (:func:`.verify.workspace_runtime`, made once if missing). An entry that applies but
    whose check fails becomes ``applies-but-no-effect``; an entry found already upstream is checked too, and
    a failing check there is reported (``effect: missing``: upstream's version lacks the effect). Entries that
    could not be checked say ``effect: not checked`` with the reason."""
    from . import verify

    def runnable(e: dict) -> bool:
        return e["status"] in ("clean", "3-way", "already-upstream") and bool(series.get(e["id"]).checks)

    ids = [e["id"] for e in data["entries"] if runnable(e)]
    for e in data["entries"]:
        if series.get(e["id"]).checks and not runnable(e):
            e["effect"] = "not checked"
            e["effect_detail"] = f"not checked: the entry is {e['status']} on {data['onto']}"
    if not ids:
        data["effect_checks"] = "no entry to check (none with checks applies)"
        return
    how = f"{python} (given)" if python else None
    if python is None:
        rt = verify.workspace_runtime(ctx) if ctx is not None else None
        if rt is None:
            for e in data["entries"]:
                if e["id"] in ids:
                    e["effect"], e["effect_detail"] = "not checked", "not checked: no runtime to run the checks in"
            data["effect_checks"] = ("not run: no workspace runtime to run them in; `vpatch apply` makes the "
                                     "workspace (then --checks makes its runtime), or pass --python PATH")
            return
        python, how = rt["python"], rt["describe"]
    results = verify.verify_tree(ctx, series, Path(data["_repo"]), data["tree"], ids, python, timeout)
    for e in data["entries"]:
        rows = results.get(e["id"])
        if rows is None:
            continue
        e["checks"] = rows
        failed = any(r["result"] == "fail" for r in rows)
        errored = any(r["result"] == "error" for r in rows)
        detail = e.get("detail") + "; " if e.get("detail") else ""
        if e["status"] == "already-upstream":
            e["effect"] = "missing" if failed else "not checked" if errored else "confirmed"
            e["detail"] = detail + {"missing": "but its effect check fails on upstream's version",
                                    "not checked": "its effect check could not run",
                                    "confirmed": "its effect check passes on upstream's version"}[e["effect"]]
        elif failed:
            e["status"], e["effect"] = "applies-but-no-effect", "missing"
            e["detail"] = detail + "it applies, but its effect check fails"
        elif errored:
            e["effect"] = "not checked"
            e["detail"] = detail + "its effect check could not run"
        else:
            e["effect"] = "confirmed"
    data["effect_checks"] = f"ran for {', '.join(ids)} ({how}, the moved tree first on PYTHONPATH)"
