"""The results store: every measurement vpatch takes, in one SQLite file (stdlib ``sqlite3``, WAL).

Keys
----
A sample is identified by what was measured (``tree`` hash of the prefix, ``metric``, run-config
hash, ``gate`` state) and where it sits in the replication structure: ``boot_id`` (one server start /
one benchmark process: the unit of replication) and ``run_index`` (the run within that boot).  Its
primary key ``uid`` is derived from (boot_id, metric, run_index) so that importing the same shard
twice, or shards that overlap, never duplicates a row; boot ids are random (uuid4) per boot, so two
machines never collide.

Context carried on every row: entry id and prefix index (position in the series when measured; the
tree hash is the identity, these are for humans and reports), base, host fingerprint (a row in
``hosts``), tool versions (vllm, torch, lm-eval), wall-clock time, a free label (e.g. "nightly") and
whether the prefix was the whole stack (``top``) for the nightly history.

Per-question gsm8k correctness (for paired tests) lives in ``accuracy_items``, keyed the same way by
(boot_id, task, filter, question_index).

The schema is versioned in ``meta``; a newer file is refused with a clear message, an older one is
migrated in place.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import statistics
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vpatch.manager.errors import VpatchError

SCHEMA_VERSION = 1
GATE_NONE = "none"  # the entry has no gate (or it does not matter for this measurement)
GATES = ("on", "off", GATE_NONE)
ANY = "*"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configs (
    hash TEXT PRIMARY KEY,
    content TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY,
    content TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    uid TEXT PRIMARY KEY,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    tree TEXT NOT NULL,
    entry_id TEXT,
    prefix_index INTEGER,
    base TEXT NOT NULL,
    config_hash TEXT NOT NULL REFERENCES configs(hash),
    gate TEXT NOT NULL,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    vllm_version TEXT,
    torch_version TEXT,
    lm_eval_version TEXT,
    boot_id TEXT NOT NULL,
    run_index INTEGER NOT NULL,
    created_at REAL NOT NULL,
    label TEXT,
    top INTEGER NOT NULL DEFAULT 0,
    extra TEXT
);
CREATE INDEX IF NOT EXISTS samples_key ON samples (tree, metric, config_hash, gate);
CREATE INDEX IF NOT EXISTS samples_top ON samples (top, metric, config_hash, created_at);
CREATE TABLE IF NOT EXISTS accuracy_items (
    uid TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    filter TEXT NOT NULL,
    question_index INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    tree TEXT NOT NULL,
    entry_id TEXT,
    prefix_index INTEGER,
    base TEXT NOT NULL,
    config_hash TEXT NOT NULL REFERENCES configs(hash),
    gate TEXT NOT NULL,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    vllm_version TEXT,
    torch_version TEXT,
    lm_eval_version TEXT,
    boot_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    label TEXT
);
CREATE INDEX IF NOT EXISTS accuracy_key ON accuracy_items (tree, task, filter, config_hash, gate);
"""

_SAMPLE_COLS = (
    "uid", "metric", "value", "unit", "tree", "entry_id", "prefix_index", "base", "config_hash", "gate",
    "host_id", "vllm_version", "torch_version", "lm_eval_version", "boot_id", "run_index", "created_at",
    "label", "top", "extra",
)
_ITEM_COLS = (
    "uid", "task", "filter", "question_index", "correct", "tree", "entry_id", "prefix_index", "base",
    "config_hash", "gate", "host_id", "vllm_version", "torch_version", "lm_eval_version", "boot_id",
    "created_at", "label",
)


class StoreError(VpatchError):
    """The results store cannot be opened, read or merged."""


@dataclass(frozen=True)
class RunContext:
    """What every row written for one measurement shares."""

    tree: str
    base: str
    config_hash: str
    config_content: Mapping | str
    entry_id: str | None = None
    prefix_index: int | None = None
    gate: str = GATE_NONE
    host: Mapping | None = None  # validation.host.host_fingerprint() of the measuring machine; 'unknown' when None
    versions: Mapping | None = None  # validation.host.tool_versions(); {} when None
    label: str | None = None
    top: bool = False  # the prefix is the whole stack (nightly history)

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise StoreError(f"gate state {self.gate!r} is not one of {', '.join(GATES)}")
        if not self.tree or not self.config_hash or not self.base:
            raise StoreError("a result needs a tree hash, a base and a run-config hash")


def new_boot_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class HistoryPoint:
    day: str
    base: str
    tree: str
    entry_id: str | None
    boots: int
    samples: int
    median: float
    boot_medians: tuple[float, ...]
    first_at: float
    last_at: float


@dataclass
class Store:
    """An open results store.  Use :func:`open_store` (or ``Store.open``) and close it (or ``with``)."""

    path: Path
    conn: sqlite3.Connection
    _hosts_seen: set = field(default_factory=set)

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, *, create: bool = True) -> Store:
        path = Path(path)
        if not create and not path.exists():
            raise StoreError(f"{path}: no results store here", "run `vpatch validate` first, or name the right file")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            store = cls(path, conn)
            store._init_schema()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: not a usable results store: {e}", "move the file aside; vpatch creates a new one") from None
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._tx() as c:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is not None and not str(row[0]).isdigit():
                raise StoreError(f"{self.path}: results store schema_version {row[0]!r} is not a number",
                                 "move the file aside; vpatch creates a new one")
            if row is None:
                c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                c.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (str(time.time()),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: results store schema {row[0]} is newer than this vpatch understands ({SCHEMA_VERSION})",
                    "upgrade vpatch, or use a copy of the store written by this version",
                )
            # future migrations: elif int(row[0]) < SCHEMA_VERSION: migrate step by step here

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    # --- writing -------------------------------------------------------------------------------

    def _ensure_context(self, c: sqlite3.Connection, ctx: RunContext) -> tuple[str, dict]:
        content = ctx.config_content
        if not isinstance(content, str):
            content = json.dumps(content, sort_keys=True, separators=(",", ":"))
        c.execute("INSERT OR IGNORE INTO configs VALUES (?, ?)", (ctx.config_hash, content))
        host = dict(ctx.host) if ctx.host is not None else {"id": "unknown"}
        host_id = host.get("id") or hashlib.sha256(json.dumps(host, sort_keys=True).encode()).hexdigest()[:16]
        if host_id not in self._hosts_seen:
            c.execute("INSERT OR IGNORE INTO hosts VALUES (?, ?)", (host_id, json.dumps(host, sort_keys=True)))
            self._hosts_seen.add(host_id)
        return host_id, dict(ctx.versions or {})

    def add_samples(
        self,
        ctx: RunContext,
        metric: str,
        values: Iterable[float],
        *,
        unit: str,
        boot_id: str,
        first_run_index: int = 0,
        extra: Mapping | None = None,
        created_at: float | None = None,
    ) -> int:
        """Record ``values`` (runs ``first_run_index``, ``+1``, ... of boot ``boot_id``) for ``metric``.

        Returns how many rows were new (re-adding the same boot/run is a no-op).
        """
        values = [float(v) for v in values]
        for v in values:
            if v != v or v in (float("inf"), float("-inf")):
                raise StoreError(f"{metric}: refusing to store a non-finite value {v}")
        now = time.time() if created_at is None else created_at
        with self._tx() as c:
            host_id, ver = self._ensure_context(c, ctx)
            n = 0
            for i, v in enumerate(values):
                run_index = first_run_index + i
                uid = _uid("s", boot_id, metric, str(run_index))
                cur = c.execute(
                    f"INSERT OR IGNORE INTO samples ({','.join(_SAMPLE_COLS)}) VALUES ({','.join('?' * len(_SAMPLE_COLS))})",
                    (uid, metric, v, unit, ctx.tree, ctx.entry_id, ctx.prefix_index, ctx.base, ctx.config_hash,
                     ctx.gate, host_id, ver.get("vllm"), ver.get("torch"), ver.get("lm_eval"), boot_id, run_index,
                     now, ctx.label, int(ctx.top), json.dumps(extra, sort_keys=True) if extra else None),
                )
                n += cur.rowcount
        return n

    def add_accuracy_items(
        self,
        ctx: RunContext,
        items: Iterable[tuple[int, bool]],
        *,
        filter_name: str,
        boot_id: str,
        task: str = "gsm8k",
        created_at: float | None = None,
    ) -> int:
        """Record per-question correctness ``(question_index, correct)`` of one lm-eval run."""
        now = time.time() if created_at is None else created_at
        with self._tx() as c:
            host_id, ver = self._ensure_context(c, ctx)
            n = 0
            for qi, ok in items:
                uid = _uid("a", boot_id, task, filter_name, str(int(qi)))
                cur = c.execute(
                    f"INSERT OR IGNORE INTO accuracy_items ({','.join(_ITEM_COLS)}) VALUES ({','.join('?' * len(_ITEM_COLS))})",
                    (uid, task, filter_name, int(qi), int(bool(ok)), ctx.tree, ctx.entry_id, ctx.prefix_index, ctx.base,
                     ctx.config_hash, ctx.gate, host_id, ver.get("vllm"), ver.get("torch"), ver.get("lm_eval"), boot_id,
                     now, ctx.label),
                )
                n += cur.rowcount
        return n

    # --- reading -------------------------------------------------------------------------------

    @staticmethod
    def _where(tree: str, metric: str, config_hash: str, gate: str, host_id: str | None) -> tuple[str, list]:
        sql = "tree=? AND metric=? AND config_hash=?"
        args: list = [tree, metric, config_hash]
        if gate != ANY:
            if gate not in GATES:
                raise StoreError(f"gate state {gate!r} is not one of {', '.join(GATES)} (or '*')")
            sql += " AND gate=?"
            args.append(gate)
        if host_id is not None:
            sql += " AND host_id=?"
            args.append(host_id)
        return sql, args

    def samples(
        self, tree: str, metric: str, config_hash: str, gate: str = GATE_NONE, *, host_id: str | None = None
    ) -> list[list[float]]:
        """The values for (tree, metric, config), one list per boot (runs in order), boots in time order."""
        where, args = self._where(tree, metric, config_hash, gate, host_id)
        rows = self.conn.execute(
            f"SELECT boot_id, value, run_index, created_at FROM samples WHERE {where} ORDER BY created_at, boot_id, run_index",
            args,
        ).fetchall()
        boots: OrderedDict[str, list[tuple[int, float]]] = OrderedDict()
        for r in rows:
            boots.setdefault(r["boot_id"], []).append((r["run_index"], r["value"]))
        return [[v for _, v in sorted(runs)] for runs in boots.values()]

    def sample_rows(self, **where: object) -> list[dict]:
        """Raw rows (dicts) matching column=value filters, e.g. ``sample_rows(tree=t, metric="tpot")``."""
        bad = [k for k in where if k not in _SAMPLE_COLS]
        if bad:
            raise StoreError(f"unknown sample column(s): {', '.join(bad)}")
        sql = " AND ".join(f"{k}=?" for k in where) or "1"
        rows = self.conn.execute(f"SELECT * FROM samples WHERE {sql} ORDER BY created_at, run_index", list(where.values()))
        return [dict(r) for r in rows]

    def has_results(
        self, tree: str, metric: str, config_hash: str, gate: str = GATE_NONE, *, min_boots: int = 1,
        host_id: str | None = None,
    ) -> bool:
        where, args = self._where(tree, metric, config_hash, gate, host_id)
        n = self.conn.execute(f"SELECT COUNT(DISTINCT boot_id) FROM samples WHERE {where}", args).fetchone()[0]
        return n >= min_boots

    def accuracy_items(
        self, tree: str, config_hash: str, filter_name: str, gate: str = GATE_NONE, *, task: str = "gsm8k",
        boot_id: str | None = None,
    ) -> dict[int, bool]:
        """``{question_index: correct}`` of one lm-eval run (``boot_id``; default the most recent run)."""
        sql = "tree=? AND config_hash=? AND filter=? AND task=?"
        args: list = [tree, config_hash, filter_name, task]
        if gate != ANY:
            sql += " AND gate=?"
            args.append(gate)
        if boot_id is None:
            row = self.conn.execute(
                f"SELECT boot_id FROM accuracy_items WHERE {sql} ORDER BY created_at DESC, boot_id DESC LIMIT 1", args
            ).fetchone()
            if row is None:
                return {}
            boot_id = row[0]
        rows = self.conn.execute(
            f"SELECT question_index, correct FROM accuracy_items WHERE {sql} AND boot_id=? ORDER BY question_index",
            args + [boot_id],
        )
        return {r[0]: bool(r[1]) for r in rows}

    def config_content(self, config_hash: str) -> dict | None:
        row = self.conn.execute("SELECT content FROM configs WHERE hash=?", (config_hash,)).fetchone()
        return json.loads(row[0]) if row else None

    def host(self, host_id: str) -> dict | None:
        row = self.conn.execute("SELECT content FROM hosts WHERE id=?", (host_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def counts(self) -> dict[str, int]:
        return {
            t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("samples", "accuracy_items", "configs", "hosts")
        }

    def nightly_history(
        self, metric: str, config_hash: str, gate: str = GATE_NONE, *, since: float | None = None,
        label: str | None = None, host_id: str | None = None,
    ) -> list[HistoryPoint]:
        """Top-of-stack results over time: one point per (UTC day, base, tree), oldest first.

        Uses rows written with ``RunContext(top=True)``; ``label`` narrows to e.g. "nightly".  Each
        point's ``median`` is the median of its boots' medians (the boot is the unit of replication).
        """
        sql = "top=1 AND metric=? AND config_hash=?"
        args: list = [metric, config_hash]
        if gate != ANY:
            sql += " AND gate=?"
            args.append(gate)
        if since is not None:
            sql += " AND created_at>=?"
            args.append(since)
        if label is not None:
            sql += " AND label=?"
            args.append(label)
        if host_id is not None:
            sql += " AND host_id=?"
            args.append(host_id)
        rows = self.conn.execute(
            f"SELECT date(created_at, 'unixepoch') AS day, base, tree, entry_id, boot_id, value, created_at "
            f"FROM samples WHERE {sql} ORDER BY created_at",
            args,
        ).fetchall()
        groups: OrderedDict[tuple, dict] = OrderedDict()
        for r in rows:
            g = groups.setdefault((r["day"], r["base"], r["tree"]), {"entry": r["entry_id"], "boots": OrderedDict(), "t": []})
            g["boots"].setdefault(r["boot_id"], []).append(r["value"])
            g["t"].append(r["created_at"])
        out = []
        for (day, base, tree), g in groups.items():
            meds = tuple(statistics.median(v) for v in g["boots"].values())
            out.append(HistoryPoint(day, base, tree, g["entry"], len(meds), sum(len(v) for v in g["boots"].values()),
                                    statistics.median(meds), meds, min(g["t"]), max(g["t"])))
        return out

    # --- moving results between machines ------------------------------------------------------

    def export(self, path: Path | str) -> Path:
        """Write a self-contained copy of the store (a shard) to ``path`` (must not exist)."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path}: already exists", "name a new file, or remove the old one")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn.execute("VACUUM INTO ?", (str(path),))
        return path

    def merge(self, other_path: Path | str) -> dict[str, int]:
        """Import every row of the store at ``other_path`` that this one lacks.  Idempotent.

        Returns how many rows each table gained.
        """
        other_path = Path(other_path)
        if not other_path.exists():
            raise StoreError(f"{other_path}: no such results store")
        if other_path.resolve() == self.path.resolve():
            return {t: 0 for t in ("configs", "hosts", "samples", "accuracy_items")}
        try:
            o = sqlite3.connect(f"file:{other_path}?mode=ro", uri=True)
            row = o.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            o.close()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{other_path}: not a results store: {e}") from None
        if row is None:
            raise StoreError(f"{other_path}: not a results store (no schema version)")
        if int(row[0]) != self.schema_version:
            raise StoreError(
                f"{other_path}: schema {row[0]} differs from this store's {self.schema_version}",
                "open it once with this vpatch version (which migrates it), then merge",
            )
        before = self.counts()
        self.conn.execute("ATTACH DATABASE ? AS other", (str(other_path),))
        try:
            with self._tx() as c:
                c.execute("INSERT OR IGNORE INTO configs SELECT hash, content FROM other.configs")
                c.execute("INSERT OR IGNORE INTO hosts SELECT id, content FROM other.hosts")
                cols = ",".join(_SAMPLE_COLS)
                c.execute(f"INSERT OR IGNORE INTO samples ({cols}) SELECT {cols} FROM other.samples")
                cols = ",".join(_ITEM_COLS)
                c.execute(f"INSERT OR IGNORE INTO accuracy_items ({cols}) SELECT {cols} FROM other.accuracy_items")
        finally:
            self.conn.execute("DETACH DATABASE other")
        after = self.counts()
        return {t: after[t] - before[t] for t in ("configs", "hosts", "samples", "accuracy_items")}


def _uid(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def open_store(path: Path | str, *, create: bool = True) -> Store:
    """Open (and by default create) the results store at ``path``."""
    return Store.open(path, create=create)
