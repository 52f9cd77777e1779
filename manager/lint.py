"""`vpatch lint`: the series file and every entry's files, checked before anything touches git.

Parsing errors come from :mod:`series`; this adds what needs the file system: patch files exist and
are format-patch files whose paths stay inside the tree, overlay folders hold plain files only,
nothing in ``patches/`` or ``overlay/`` is left unreferenced.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import Location, Problem, SeriesError
from .series import Series, load_series, safe_relpath

DIFF_PATH_RE = re.compile(r"^(?:diff --git a/(\S+) b/(\S+)|--- (?:a/)?(\S+)|\+\+\+ (?:b/)?(\S+)|rename (?:from|to) (\S+)|copy (?:from|to) (\S+))")


def patch_paths(text: str) -> list[str]:
    paths = []
    in_header = True
    for line in text.splitlines():
        if line.startswith("diff --git "):
            in_header = False
        if in_header:
            continue
        m = DIFF_PATH_RE.match(line)
        if m:
            for p in m.groups():
                if p and p != "/dev/null":
                    paths.append(p)
    return paths


HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _strip_prefix(p: str, prefix: str) -> str | None:
    return None if p == "/dev/null" else (p[len(prefix):] if p.startswith(prefix) else p)


def diff_problems(text: str) -> list[tuple[int, str]]:
    """What is wrong with the diff part of a patch (pure): (line, message) for a truncated hunk, a hunk
    whose header counts a different number of lines than it holds, and ``---``/``+++`` lines naming
    another file than their ``diff --git`` header. The commit message before the first diff is not read."""
    out: list[tuple[int, str]] = []
    lines = text.splitlines()
    files: tuple[str, str] | None = None
    hunk: list | None = None  # [header line, old left, new left, header text]
    last: list | None = None  # the last hunk that completed

    def close(n: int) -> None:
        nonlocal hunk
        if hunk and (hunk[1] > 0 or hunk[2] > 0):
            out.append((hunk[0], f"hunk {hunk[3]} is truncated: {hunk[1]} old and {hunk[2]} new lines missing "
                                 f"before line {n}"))
        hunk = None

    started = False
    for n, line in enumerate(lines, 1):
        if not started:
            started = line.startswith("diff --git ")
            if not started:
                continue
        if hunk is not None:
            if line.startswith("\\"):
                continue
            if line == "-- " and hunk[1] == 0:  # no removed line can follow: format-patch's signature
                close(n)  # the hunk ended short of its header's new-line count
                break
            kind = line[:1]
            if kind in ("", " ", "-", "+"):
                if kind in ("", " ", "-"):
                    hunk[1] -= 1
                if kind in ("", " ", "+"):
                    hunk[2] -= 1
                if hunk[1] < 0 or hunk[2] < 0:
                    out.append((hunk[0], f"hunk {hunk[3]} holds more lines than its header counts (line {n})"))
                    hunk = None
                elif hunk[1] == 0 and hunk[2] == 0:
                    last, hunk = hunk, None
                continue
            close(n)
        if line == "-- ":  # format-patch's signature: the diff is over
            break
        if line.startswith("diff --git "):
            parts = line.split(" ")
            files = (parts[2][2:], parts[3][2:]) if len(parts) == 4 and parts[2].startswith("a/") and parts[3].startswith("b/") else None
        elif line.startswith("--- ") and files:
            p = _strip_prefix(line[4:].rstrip("\t"), "a/")
            if p is not None and p != files[0]:
                out.append((n, f"'---' names {p!r} but its 'diff --git' header names {files[0]!r}"))
        elif line.startswith("+++ ") and files:
            p = _strip_prefix(line[4:].rstrip("\t"), "b/")
            if p is not None and p != files[1]:
                out.append((n, f"'+++' names {p!r} but its 'diff --git' header names {files[1]!r}"))
        elif m := HUNK_RE.match(line):
            old = int(m.group(2)) if m.group(2) is not None else 1
            new = int(m.group(4)) if m.group(4) is not None else 1
            hunk = [n, old, new, line.split(" @@")[0] + " @@"]
            if old == 0 and new == 0:
                out.append((n, f"hunk {hunk[3]} changes nothing"))
                hunk = None
        elif line[:1] in ("+", "-", " ") and not line.startswith(("+++ ", "--- ")):
            if last is not None and len(last) == 4:
                out.append((last[0], f"hunk {last[3]} holds more lines than its header counts (line {n} is left over)"))
                last.append("reported")
            elif last is None:
                out.append((n, "a diff line outside any hunk"))
    close(len(lines) + 1)
    return out


def lint_series(series: Series) -> list[Problem]:
    problems: list[Problem] = []
    patches_dir = series.path.resolve().parent
    overlay_root = patches_dir.parent / "overlay"
    used_patches, used_overlays = set(), set()
    for e in series.entries:
        loc = Location(series.path, series.lines.get(e.id, 0), e.id)
        if e.kind == "patch":
            why = safe_relpath(e.patch_file)
            if why or "/" in e.patch_file.strip("./"):
                problems.append(Problem(loc, f"patch file {e.patch_file!r} must be a plain name inside patches/"))
                continue
            f = patches_dir / e.patch_file
            used_patches.add(f.name)
            if f.is_symlink():
                problems.append(Problem(loc, f"patch file {f} is a symbolic link"))
            elif not f.exists():
                problems.append(Problem(loc, f"patch file {f} does not exist"))
            else:
                text = f.read_text(errors="replace")
                if "diff --git " not in text:
                    problems.append(Problem(Location(f, 1, e.id), "not a git format-patch file (no 'diff --git' section)"))
                if not re.search(r"^Subject: ", text, re.M):
                    problems.append(Problem(Location(f, 1, e.id), "no 'Subject:' header (make it with git format-patch)"))
                for lineno, line in enumerate(text.splitlines(), 1):
                    m = DIFF_PATH_RE.match(line)
                    if not m:
                        continue
                    for p in m.groups():
                        if p and p != "/dev/null" and (why := safe_relpath(p)):
                            problems.append(Problem(Location(f, lineno, e.id), why))
                for lineno, msg in diff_problems(text):
                    problems.append(Problem(Location(f, lineno, e.id), msg))
                for lineno, line in enumerate(text.splitlines(), 1):
                    if re.match(r"^(new file mode|new mode|index \S+ )120000", line):
                        problems.append(Problem(Location(f, lineno, e.id), "the patch creates a symbolic link"))
        else:
            d = overlay_root / e.id
            used_overlays.add(e.id)
            if d.is_symlink() or not d.is_dir():
                problems.append(Problem(loc, f"overlay folder {d} does not exist"))
                continue
            count = 0
            for p in sorted(d.rglob("*")):
                rel = p.relative_to(d).as_posix()
                if p.is_symlink():
                    problems.append(Problem(Location(p, 0, e.id), "symbolic link in an overlay (only plain files are laid down)"))
                elif p.is_file():
                    count += 1
                    if why := safe_relpath(rel):
                        problems.append(Problem(Location(p, 0, e.id), why))
            if count == 0:
                problems.append(Problem(loc, f"overlay folder {d} holds no files"))
        for c in e.checks:
            if not c.strip():
                problems.append(Problem(loc, "empty check command"))
    if patches_dir.exists():
        for f in sorted(patches_dir.glob("*.patch")):
            if f.name not in used_patches:
                problems.append(Problem(Location(f), "patch file not referenced by any entry", "warning"))
    if overlay_root.exists():
        for d in sorted(overlay_root.iterdir()):
            if d.is_dir() and d.name not in used_overlays:
                problems.append(Problem(Location(d), "overlay folder not referenced by any entry", "warning"))
    return problems


def load_checked(path: Path) -> Series:
    """Load the series and refuse it if lint finds errors (warnings pass)."""
    series = load_series(path)
    errors = [p for p in lint_series(series) if p.severity == "error"]
    if errors:
        raise SeriesError(errors)
    return series
