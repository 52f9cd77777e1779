"""`git apply --cached` + `write-tree` + `commit-tree` in-process, for the plain patch that applies exactly.

Most entries of a series are plain text patches whose every hunk matches where it says it does. For them
`apply` needs no git process at all: read the old blobs, put the hunks in, write the new blobs, the trees
on the path to the root and the commit. Everything else — an offset, a mode change, a rename, a binary
or ``\\ No newline`` patch, a quoted path, an identity or date git would rewrite — returns None, and the
caller lets git do it (``git apply --cached``). Where this module answers, the answer is git's:

- **Where a hunk goes**: git tries the hunk's own line first (the line in the image as changed by the
  hunks before it; line 0 when the hunk starts at old line 0 or 1, the end when it has no trailing context)
  and takes it when the preimage matches there byte for byte; only when it does not does git search for an
  offset. This module takes exactly that first try and gives up otherwise.
- **Trees**: entries sorted as git sorts them (a tree's name compares as ``name/``), modes as git writes
  them; a directory left empty disappears, as it does from an index.
- **Commits**: ``tree``, ``parent``, ``author``, ``committer``, blank line, message: the bytes
  ``commit-tree`` writes for a UTF-8 message, with the date git's RFC 2822 parser would give.

The parsing, the hunk arithmetic and the object formats are pure (bytes in, bytes out); reading and
writing objects goes through a :class:`Store` the caller gives (git's cat-file and the loose-object writer
of GitPython's gitdb: ``manager/git.py``). Tests compare it with git on real patches.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Protocol

TREE_MODE = b"40000"
BLOB_MODES = (b"100644", b"100755")
KNOWN_MODES = (TREE_MODE, *BLOB_MODES, b"120000", b"160000")


class Store(Protocol):
    def read(self, sha: str) -> bytes | None: ...

    def write(self, kind: str, data: bytes) -> str: ...


@dataclass(frozen=True)
class Hunk:
    old_start: int
    old_len: int
    new_start: int
    pre: tuple[bytes, ...]   # context and removed lines, each with its "\n"
    post: tuple[bytes, ...]  # context and added lines
    leading: int             # context lines before the first change
    trailing: int            # context lines after the last change


@dataclass(frozen=True)
class FileDiff:
    path: str
    op: str                  # modify | add | delete
    mode: bytes | None       # new file's mode, or the mode the "index" line states
    hunks: tuple[Hunk, ...]


_HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_INDEX = re.compile(rb"^index [0-9a-f]+\.\.[0-9a-f]+(?: (\d+))?$")
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9_.+@=,%~-]+(?:/[A-Za-z0-9_.+@=,%~-]+)*$")


def _plain(path: str) -> bool:
    """A path git writes unquoted, with nothing to trim, that git apply takes as it is."""
    return bool(_PLAIN_PATH.match(path)) and not any(p in ("", ".", "..", ".git") for p in path.split("/"))


def parse(diff: bytes) -> list[FileDiff] | None:
    """The file diffs of a ``git diff`` text, or None when any part is outside the plain case."""
    lines = diff.split(b"\n")
    files: list[FileDiff] = []
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].startswith(b"diff --git "):
            i += 1  # a diffstat, a signature: git apply skips text between file diffs too
            continue
        rest = lines[i][len(b"diff --git "):].decode("utf-8", "surrogateescape")
        half = (len(rest) - 1) // 2
        path = rest[2:half]
        if rest != f"a/{path} b/{path}" or not _plain(path):
            return None
        i += 1
        op, mode, old, new = "modify", None, None, None
        while i < n and not lines[i].startswith((b"@@", b"diff --git ")):
            line = lines[i]
            if m := _INDEX.match(line):
                mode = m.group(1) if m.group(1) else mode
            elif line.startswith(b"new file mode "):
                op, mode = "add", line[len(b"new file mode "):]
            elif line.startswith(b"deleted file mode "):
                op, mode = "delete", line[len(b"deleted file mode "):]
            elif line.startswith(b"--- "):
                old = line[4:]
            elif line.startswith(b"+++ "):
                new = line[4:]
            else:
                return None  # a mode change, a rename or copy, a binary patch, anything else
            i += 1
        want_old = b"/dev/null" if op == "add" else b"a/" + path.encode()
        want_new = b"/dev/null" if op == "delete" else b"b/" + path.encode()
        if old != want_old or new != want_new or (mode is not None and mode not in BLOB_MODES):
            return None
        hunks = []
        while i < n and lines[i].startswith(b"@@"):
            parsed = _hunk(lines, i)
            if parsed is None:
                return None
            hunk, i = parsed
            hunks.append(hunk)
        if not hunks or any(f.path == path for f in files):
            return None  # an empty new file, a path twice: git's own rules
        files.append(FileDiff(path, op, mode, tuple(hunks)))
    return files or None


def _hunk(lines: list[bytes], i: int) -> tuple[Hunk, int] | None:
    m = _HUNK.match(lines[i])
    if m is None:
        return None
    old_start, new_start = int(m.group(1)), int(m.group(3))
    old_len = int(m.group(2)) if m.group(2) is not None else 1
    new_len = int(m.group(4)) if m.group(4) is not None else 1
    pre: list[bytes] = []
    post: list[bytes] = []
    kinds = []
    i += 1
    while len(pre) < old_len or len(post) < new_len:
        if i >= len(lines) or not lines[i]:
            return None  # cut short, or an empty line git would read as context: let git decide
        tag, text = lines[i][:1], lines[i][1:] + b"\n"
        if tag == b" ":
            pre.append(text)
            post.append(text)
        elif tag == b"-":
            pre.append(text)
        elif tag == b"+":
            post.append(text)
        else:
            return None  # "\ No newline at end of file", or a malformed hunk
        kinds.append(tag)
        i += 1
    if len(pre) != old_len or len(post) != new_len or (i < len(lines) and lines[i].startswith(b"\\")):
        return None
    changed = [k for k, t in enumerate(kinds) if t != b" "]
    if not changed:
        return None
    leading, trailing = changed[0], len(kinds) - 1 - changed[-1]
    return Hunk(old_start, old_len, new_start, tuple(pre), tuple(post), leading, trailing), i


def split_lines(data: bytes) -> list[bytes] | None:
    """Lines with their ``\\n``; None when the text does not end with one (git's ``\\ No newline`` case)."""
    if not data:
        return []
    if not data.endswith(b"\n"):
        return None
    return [line + b"\n" for line in data[:-1].split(b"\n")]


def apply_hunks(old: bytes, hunks: tuple[Hunk, ...]) -> bytes | None:
    """``old`` with the hunks put in where git's first try puts them; None where that try would miss."""
    img = split_lines(old)
    if img is None:
        return None
    for h in hunks:
        match_beginning = h.old_start <= 1
        match_end = h.trailing == 0
        if match_beginning:
            pos = 0
        elif match_end:
            pos = len(img) - len(h.pre)
        else:
            pos = h.new_start - 1 if h.new_start else 0
        if pos < 0 or pos + len(h.pre) > len(img):
            return None
        if match_end and pos + len(h.pre) != len(img):
            return None
        if tuple(img[pos:pos + len(h.pre)]) != h.pre:
            return None
        img[pos:pos + len(h.pre)] = h.post
    return b"".join(img)


def apply_diff(store: Store, root: str, files: list[FileDiff]) -> str | None:
    """The tree ``git apply --cached`` + ``write-tree`` make of tree ``root`` and the parsed diff ``files``,
    its blobs and trees written to ``store``; None where git's first try would miss or git would refuse (a
    new file that is there, a changed file that is not a plain blob or has another mode). Blobs are written
    only once every file has applied."""
    new_files: list[tuple[str, bytes, bytes | None]] = []  # (path, mode, contents or None: deleted)
    for f in files:
        have = tree_entry(store, root, f.path)
        if f.op == "add":
            if have is not None or f.mode is None:
                return None
            mode, old = f.mode, b""
        else:
            if have is None or have[0] not in BLOB_MODES or (f.mode is not None and f.mode != have[0]):
                return None
            old_blob = store.read(have[1])
            if old_blob is None:
                return None
            mode, old = have[0], old_blob
        new = apply_hunks(old, f.hunks)
        if new is None or (f.op == "delete" and new):
            return None
        new_files.append((f.path, mode, None if f.op == "delete" else new))
    changes: dict[str, Change] = {
        path: None if data is None else (mode, store.write("blob", data)) for path, mode, data in new_files}
    return edit_tree(store, root, changes)


# --- trees ------------------------------------------------------------------------------------------

Entry = tuple[bytes, bytes, bytes]  # (mode, name, binary sha)


def parse_tree(raw: bytes) -> list[Entry] | None:
    entries: list[Entry] = []
    i = 0
    while i < len(raw):
        sp = raw.find(b" ", i)
        nul = raw.find(b"\0", sp + 1)
        if sp < 0 or nul < 0 or nul + 21 > len(raw):
            return None
        mode = raw[i:sp]
        if mode not in KNOWN_MODES:
            return None  # a mode write-tree would normalise: let git rewrite this directory
        entries.append((mode, raw[sp + 1:nul], raw[nul + 1:nul + 21]))
        i = nul + 21
    return entries


def _sort_key(e: Entry) -> bytes:
    return e[1] + b"/" if e[0] == TREE_MODE else e[1]


def serialize_tree(entries: list[Entry]) -> bytes:
    return b"".join(mode + b" " + name + b"\0" + sha for mode, name, sha in sorted(entries, key=_sort_key))


Change = tuple[bytes, str] | None  # (mode, blob sha) to put at a path, or None to remove it


def edit_tree(store: Store, root: str, changes: dict[str, Change]) -> str | None:
    """The tree ``root`` with ``changes`` made, written to ``store``; None where git would refuse or differ
    (a path through a file, an entry of an unusual mode)."""
    nested: dict[bytes, Any] = {}  # name -> a dict (a directory below) or ("change", Change)
    for path, change in changes.items():
        node = nested
        parts = path.encode().split(b"/")
        for part in parts[:-1]:
            sub = node.setdefault(part, {})
            if not isinstance(sub, dict):
                return None
            node = sub
        if parts[-1] in node:
            return None
        node[parts[-1]] = ("change", change)
    out = _edit(store, root, nested)
    return None if out is _FAIL else (out or _write_tree(store, []))


_FAIL = object()


def _edit(store: Store, sha: str | None, changes: dict):
    """The new sha of tree ``sha`` (None: a new directory), None if it ends empty, _FAIL to give up."""
    entries: list[Entry] = []
    if sha is not None:
        raw = store.read(sha)
        parsed = parse_tree(raw) if raw is not None else None
        if parsed is None:
            return _FAIL
        entries = parsed
    by_name = {name: (mode, s) for mode, name, s in entries}
    for name, what in changes.items():
        have = by_name.get(name)
        if isinstance(what, dict):  # a directory below
            if have is not None and have[0] != TREE_MODE:
                return _FAIL  # a file in the way
            sub = _edit(store, have[1].hex() if have else None, what)
            if sub is _FAIL:
                return _FAIL
            if sub is None:
                by_name.pop(name, None)
            else:
                by_name[name] = (TREE_MODE, bytes.fromhex(sub))
            continue
        change = what[1]
        if change is None:
            if have is None or have[0] not in BLOB_MODES:
                return _FAIL
            del by_name[name]
        else:
            if have is not None and have[0] not in BLOB_MODES:
                return _FAIL  # a directory or a link in the way
            by_name[name] = (change[0], bytes.fromhex(change[1]))
    if not by_name:
        return None
    return _write_tree(store, [(mode, name, s) for name, (mode, s) in by_name.items()])


def _write_tree(store: Store, entries: list[Entry]) -> str:
    return store.write("tree", serialize_tree(entries))


def tree_entry(store: Store, root: str, path: str) -> tuple[bytes, str] | None:
    """(mode, sha) of ``path`` in tree ``root``; None if absent (or anything on the way is not a tree)."""
    sha = root
    parts = path.encode().split(b"/")
    for k, part in enumerate(parts):
        raw = store.read(sha)
        entries = parse_tree(raw) if raw is not None else None
        if entries is None:
            return None
        hit = next((e for e in entries if e[1] == part), None)
        if hit is None:
            return None
        if k == len(parts) - 1:
            return hit[0], hit[2].hex()
        if hit[0] != TREE_MODE:
            return None
        sha = hit[2].hex()
    return None


# --- commits ----------------------------------------------------------------------------------------

_CRUD = set(b" .,:;<>\"\\'") | set(range(33))
_MONTHS = {m: k for k, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                       "Dec"), 1)}
_RFC2822 = re.compile(r"^(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(\d{1,2}) ([A-Z][a-z]{2}) (\d{4}) "
                      r"(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$")


def plain_ident(s: str) -> bool:
    """A name or e-mail git writes as it is (nothing to trim at the ends, no ``<``, ``>`` or newline)."""
    b = s.encode("utf-8", "surrogateescape")
    return bool(b) and b[0] not in _CRUD and b[-1] not in _CRUD and not any(c in b for c in b"<>\n")


def git_date(date: str) -> str | None:
    """``<unix seconds> <±hhmm>`` for a plain RFC 2822 date (what mailinfo prints), as git parses it."""
    m = _RFC2822.match(date)
    if m is None or m.group(2) not in _MONTHS:
        return None
    import calendar

    day, year = int(m.group(1)), int(m.group(3))
    hh, mm, ss = int(m.group(4)), int(m.group(5)), int(m.group(6))
    tzh, tzm = int(m.group(8)), int(m.group(9))
    if not (1 <= day <= 31 and hh < 24 and mm < 60 and ss < 60 and tzm < 60 and year >= 1970):
        return None
    offset = (tzh * 60 + tzm) * 60 * (-1 if m.group(7) == "-" else 1)
    try:
        stamp = calendar.timegm((year, _MONTHS[m.group(2)], day, hh, mm, ss)) - offset
    except (OverflowError, ValueError):
        return None
    return f"{stamp} {m.group(7)}{m.group(8)}{m.group(9)}"


def commit_object(tree: str, parent: str, name: str, email: str, date: str, message: str) -> bytes:
    """The commit ``commit-tree TREE -p PARENT`` writes with author = committer = (name, email, date)."""
    ident = f"{name} <{email}> {date}"
    head = f"tree {tree}\nparent {parent}\nauthor {ident}\ncommitter {ident}\n\n"
    return (head + message).encode("utf-8", "surrogateescape")


def object_id(kind: str, data: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(data)}\0".encode() + data).hexdigest()
