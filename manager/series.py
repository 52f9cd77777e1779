"""The series: ``patches/series.toml`` parsed into typed, validated objects (pure: no git, no I/O
beyond reading the text it is given).

A series is a pinned **base** (a vLLM ref), a **source** to get it from, and ordered **entries**.
Each entry is one commit on top of the base: a ``patch`` (git format-patch file in ``patches/``)
or an ``overlay`` (whole files under ``overlay/<id>/`` mirroring vLLM's tree).

Example::

    [series]
    name = "gfx11-moe"
    base = "v0.28.0"
    source = "pypi"          # "pypi" | a git URL | a local repository path

    [[entry]]
    id = "mrope-cos-sin-cache"
    title = "MRoPE: cache the cos/sin gather across layers"
    area = "rotary"
    upstream = "pending"     # or { submitted = "URL" } or { merged = "v0.20.0" }
    checks = ["python {series_dir}/checks/mrope_cache.py"]
    [[entry.claims]]
    metric = "tpot"
    direction = "lower"
    before = 15.20
    after = 15.11
    unit = "ms"
"""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar, cast
from collections.abc import Callable

from .errors import Location, Problem, SeriesError

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:(rc|a|b|\.post|\.dev)(\d+))?$")
DEFAULT_SOURCE = "https://github.com/vllm-project/vllm.git"
T = TypeVar("T")
METRICS = ("tpot", "ttft", "itl", "throughput", "gsm8k", "kernel")


@dataclass(frozen=True)
class Claim:
    """What the entry's author says it changes, as stated (checked later against measurements)."""

    metric: str  # tpot | ttft | itl | throughput | gsm8k | kernel:NAME
    direction: Literal["lower", "higher", "same"] = "lower"
    before: float | None = None
    after: float | None = None
    change_pct: float | None = None  # signed relative change in percent
    unit: str | None = None
    gate: Literal["on", "off"] | None = None
    note: str | None = None

    @property
    def expected_pct(self) -> float | None:
        """The claimed relative change in percent (from change_pct, or before/after)."""
        if self.change_pct is not None:
            return self.change_pct
        if self.before and self.after is not None:
            return (self.after - self.before) / self.before * 100.0
        return None

    def as_dict(self) -> dict[str, object]:
        """The claim as written (fields left out where not given)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Upstream:
    state: Literal["pending", "submitted", "merged"] = "pending"
    url: str | None = None
    version: str | None = None

    def as_toml(self) -> object:
        if self.state == "pending":
            return "pending"
        if self.state == "submitted":
            return {"submitted": self.url}
        return {"merged": self.version}


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    kind: Literal["patch", "overlay"] = "patch"
    area: str = "misc"
    patch: str | None = None  # patch file, relative to patches/ (default <id>.patch)
    message: str | None = None  # overlay only: commit message body
    author: str | None = None  # overlay only: 'Name <email>'
    gate: dict[str, str] = field(default_factory=dict)
    claims: tuple[Claim, ...] = ()
    upstream: Upstream = Upstream()
    checks: tuple[str, ...] = ()
    bench: str | None = None  # kernel micro-benchmark command (prints JSON samples)

    @property
    def patch_file(self) -> str:
        return self.patch or f"{self.id}.patch"

    def overlay_rel(self) -> str:
        return self.id


@dataclass(frozen=True)
class SeriesHeader:
    base: str
    name: str = "series"
    source: str = DEFAULT_SOURCE
    package: str = "vllm"
    author: str | None = None


@dataclass(frozen=True)
class Series:
    header: SeriesHeader
    entries: tuple[Entry, ...]
    path: Path
    lines: dict[str, int] = field(default_factory=dict, compare=False)  # entry id -> line of its [[entry]]

    @property
    def base(self) -> str:
        return self.header.base

    @property
    def source(self) -> str:
        return self.header.source

    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def get(self, entry_id: str) -> Entry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        raise SeriesError([Problem(Location(self.path), f"no entry {entry_id!r} in the series")],
                          hint=f"entries are: {', '.join(self.ids()) or '(none)'}")

    def index(self, entry_id: str) -> int:
        return self.ids().index(self.get(entry_id).id)

    def upto(self, entry_id: str | None) -> tuple[Entry, ...]:
        if entry_id is None:
            return self.entries
        return self.entries[: self.index(entry_id) + 1]


def parse_version(v: str) -> tuple[int, ...] | None:
    """'v0.28.0' -> (0, 28, 0, 9, 0); None if not a release version. Pre-releases sort before."""
    m = VERSION_RE.match(v.strip())
    if not m:
        return None
    major, minor, patch, pre, pre_n = m.groups()
    rank = {"dev": 0, "a": 1, "b": 2, "rc": 3, None: 9, ".post": 10}[pre.lstrip(".") if pre and pre != ".post" else pre]
    return (int(major), int(minor), int(patch or 0), rank, int(pre_n or 0))


def merged_at_or_before(entry: Entry, base: str) -> bool:
    """True when the entry is recorded as merged upstream in a release at or before ``base``."""
    if entry.upstream.state != "merged" or not entry.upstream.version:
        return False
    mv, bv = parse_version(entry.upstream.version), parse_version(base)
    if mv is None or bv is None:
        return entry.upstream.version == base
    return mv <= bv


def _line_index(text: str) -> tuple[list[int], int | None]:
    """Lines (1-based) of each ``[[entry]]`` header, and of the ``[series]`` table."""
    entries, series_line = [], None
    for i, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if re.match(r"^\[\[\s*entry\s*\]\]", s):
            entries.append(i)
        elif re.match(r"^\[\s*series\s*\]", s):
            series_line = i
    return entries, series_line


def _key_line(text: str, start: int, end: int | None, key: str) -> int:
    lines = text.splitlines()
    stop = end - 1 if end else len(lines)
    for i in range(start, stop + 1):
        if i - 1 < len(lines) and re.match(rf"^\s*{re.escape(key)}\s*=", lines[i - 1]):
            return i
    return start


# --- the fast path: a well-formed series never imports pydantic -----------------------------------------
# Each function returns the dataclass when the table is certainly valid (a strict subset of what the schema
# in series_schema.py accepts, converted as pydantic would), else None: then the schema decides and says
# what is wrong, in the same words as always. tests/manager/test_series_fast.py holds the two equal.

_ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_HEADER_KEYS = frozenset({"name", "base", "source", "package", "author"})
_ENTRY_STR = frozenset({"id", "title", "kind", "area", "patch", "message", "author", "bench"})
_CLAIM_KEYS = frozenset({"metric", "direction", "before", "after", "change_pct", "unit", "gate", "note"})


def _fast_header(raw: object) -> SeriesHeader | None:
    if not (isinstance(raw, dict) and "base" in raw and raw.keys() <= _HEADER_KEYS
            and all(type(v) is str for v in raw.values())):
        return None
    return SeriesHeader(**raw)


def _number(v: object) -> float | None:
    return float(v) if type(v) in (int, float) and math.isfinite(v) else None  # type: ignore[arg-type]


def _fast_claim(raw: object) -> Claim | None:
    if not (isinstance(raw, dict) and "metric" in raw and raw.keys() <= _CLAIM_KEYS):
        return None
    d = dict(raw)
    for k in ("metric", "unit", "note"):
        if k in d and type(d[k]) is not str:
            return None
    if d["metric"].split(":", 1)[0] not in METRICS or d.get("direction", "lower") not in ("lower", "higher", "same") \
            or d.get("gate", "on") not in ("on", "off"):
        return None
    for k, lo in (("before", 0.0), ("after", 0.0), ("change_pct", -100.0)):
        if k in d:
            v = _number(d[k])
            if v is None or v <= lo:
                return None
            d[k] = v
    return Claim(**d)


def _fast_upstream(v: object) -> Upstream | None:
    if v in (None, "pending"):
        return Upstream(state="pending")
    if isinstance(v, dict) and len(v) == 1:
        (k, val), = v.items()
        if k == "submitted" and type(val) is str:
            return Upstream(state="submitted", url=val)
        if k == "merged" and type(val) is str and VERSION_RE.match(val):
            return Upstream(state="merged", version=val)
    return None


def _fast_entry(raw: object) -> Entry | None:
    if not (isinstance(raw, dict) and "id" in raw and "title" in raw
            and raw.keys() <= _ENTRY_STR | {"gate", "claims", "upstream", "checks"}):
        return None
    d = dict(raw)
    if any(type(d[k]) is not str for k in _ENTRY_STR & d.keys()) or not ID_RE.match(d["id"]) \
            or d.get("kind", "patch") not in ("patch", "overlay"):
        return None
    if d.get("kind") == "overlay" and d.get("patch") or d.get("kind", "patch") == "patch" and (d.get("message") or d.get("author")):
        return None
    if "gate" in d:
        if not (isinstance(d["gate"], dict) and all(type(k) is str and _ENV_RE.match(k) and type(v) is str
                                                    for k, v in d["gate"].items())):
            return None
        d["gate"] = dict(d["gate"])
    if "checks" in d:
        if not (isinstance(d["checks"], list) and all(type(c) is str for c in d["checks"])):
            return None
        d["checks"] = tuple(d["checks"])
    if "claims" in d:
        if not isinstance(d["claims"], list):
            return None
        claims = [_fast_claim(c) for c in d["claims"]]
        if any(c is None for c in claims):
            return None
        d["claims"] = tuple(claims)
    if "upstream" in d:
        up = _fast_upstream(d["upstream"])
        if up is None:
            return None
        d["upstream"] = up
    return Entry(**d)


def _validated(kind: Literal["header", "entry"], raw: object, fast: Callable[[object], T | None]
               ) -> tuple[T | None, list[dict[str, Any]]]:
    """The fast path's object, else what the pydantic schema (imported only now) makes of ``raw``."""
    obj = fast(raw)
    if obj is not None:
        return obj, []
    from . import series_schema
    made, errors = series_schema.validate(kind, raw)
    return cast("T | None", made), errors


def parse_series(text: str, path: Path) -> Series:
    """Parse and validate; raise :class:`SeriesError` naming the file, line and entry of each problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = getattr(e, "lineno", 0) or int((re.search(r"line (\d+)", str(e)) or [0, 0])[1])
        raise SeriesError([Problem(Location(path, line), f"not valid TOML: {e}")]) from None
    entry_lines, series_line = _line_index(text)
    problems: list[Problem] = []
    unknown = set(doc) - {"series", "entry"}
    for k in sorted(unknown):
        problems.append(Problem(Location(path, _key_line(text, 1, None, k)), f"unknown top-level key {k!r}"))
    header = None
    if "series" not in doc:
        problems.append(Problem(Location(path, 1), "missing [series] table (with at least base = \"vX.Y.Z\")"))
    else:
        header, errors = _validated("header", doc["series"], _fast_header)
        for err in errors:
            key = str(err["loc"][0]) if err["loc"] else ""
            line = _key_line(text, series_line or 1, None, key) if key else (series_line or 1)
            problems.append(Problem(Location(path, line), f"[series] {key}: {err['msg']}"))
    entries: list[Entry] = []
    raw_entries = doc.get("entry", [])
    if not isinstance(raw_entries, list):
        problems.append(Problem(Location(path, 1), "'entry' must be an array of tables ([[entry]])"))
        raw_entries = []
    seen: dict[str, int] = {}
    lines: dict[str, int] = {}
    for i, raw in enumerate(raw_entries):
        start = entry_lines[i] if i < len(entry_lines) else 0
        end = entry_lines[i + 1] if i + 1 < len(entry_lines) else None
        eid = raw.get("id") if isinstance(raw, dict) else None
        entry, errors = _validated("entry", raw, _fast_entry)
        for err in errors:
            key = str(err["loc"][0]) if err["loc"] else ""
            line = _key_line(text, start, end, key) if key and start else start
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(Problem(Location(path, line, eid if isinstance(eid, str) else f"#{i + 1}"), f"{loc}: {msg}"))
        if entry is None:
            continue
        if entry.id in seen:
            problems.append(Problem(Location(path, start, entry.id),
                                    f"duplicate id (first defined at line {seen[entry.id]})"))
            continue
        seen[entry.id] = start
        lines[entry.id] = start
        entries.append(entry)
    if problems:
        raise SeriesError(problems)
    assert header is not None
    return Series(header=header, entries=tuple(entries), path=path, lines=lines)


def load_series(path: Path) -> Series:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SeriesError([Problem(Location(path), "series file not found")],
                          hint="run `vpatch init --base vX.Y.Z` to start one, or pass --series PATH") from None
    except IsADirectoryError:
        raise SeriesError([Problem(Location(path), "is a directory, not a series file")],
                          hint="pass --series the series.toml file (default patches/series.toml)") from None
    except OSError as e:
        raise SeriesError([Problem(Location(path), f"cannot read the series file: {e.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SeriesError([Problem(Location(path, line), f"not UTF-8 text (byte {data[e.start]:#04x})")],
                          hint="TOML files are UTF-8: re-save the file as UTF-8") from None
    return parse_series(text, path)


def safe_relpath(rel: str) -> str | None:
    """Why ``rel`` may not be written inside the workspace, or None when it is fine."""
    if not rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        return f"absolute path {rel!r}"
    parts = PurePosixPath(rel).parts
    if any(p == ".." for p in parts):
        return f"path {rel!r} leaves the tree ('..')"
    if parts and parts[0] == ".git" or ".git" in parts:
        return f"path {rel!r} writes into .git"
    return None
