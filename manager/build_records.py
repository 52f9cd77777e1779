"""Build records: what was built, how, how long, where its log is, and whether it worked.

One JSON file per build under ``.vpatch/builds/records/<id>.json``, written atomically (temp file +
rename) when the build starts (status ``running``) and again when it ends (``success`` / ``failed``),
so a crash leaves a whole record behind, never half of one (each is a versioned
:class:`~.state.BuildRecord`, validated on read: a damaged one is named in one line); a ``running`` record whose process is gone
reads as ``interrupted``. Records are keyed by the **tree hash** of the prefix built (and carry the
hash of its build inputs, which is what reuse compares). Build logs live in ``.vpatch/builds/logs/``.

Fields: ``id`` (12 hex), ``tree``, ``commit``, ``upto`` (entry id or null), ``target``, ``arch``,
``jobs``, ``inputs_hash``, ``inputs`` (how many files the hash covers), ``action`` (``full`` |
``incremental`` | ``reinstall`` | ``reuse`` | ``restore``), ``reused_from`` (a build id), ``reason``,
``status``, ``started``/``when`` (local ISO time), ``duration_s``, ``phases`` (seconds per phase),
``compiled_units`` (count) and ``compiled`` (the first 200 names), ``steps`` (the commands run),
``log``, ``error`` and ``log_tail`` for a failure, ``slot`` (the build tree), ``pid``.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from . import atomic, state

STATUS_OK = "success"


def builds_dir(ctx) -> Path:
    return Path(ctx.state_dir) / "builds"


def records_dir(ctx) -> Path:
    return builds_dir(ctx) / "records"


def new_id(tree: str, target: str) -> str:
    seed = f"{tree}\0{target}\0{time.time_ns()}\0{os.getpid()}".encode()
    return hashlib.sha256(seed).hexdigest()[:12]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def save(ctx, rec: dict) -> None:
    atomic.write_json(records_dir(ctx) / f"{rec['id']}.json", state.stamp(rec))


def load_all(ctx) -> list[dict]:
    """Every record, oldest first (by start time, then id)."""
    d = records_dir(ctx)
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("*.json"):
        rec = state.read(state.BuildRecord, p)  # damaged: one line naming the file (delete it)
        if rec.get("status") == "running" and not atomic.alive(rec.get("pid")):
            rec["status"] = "interrupted"
        out.append(rec)
    out.sort(key=lambda r: (r.get("started_ns", 0), r["id"]))
    return out


def get(ctx, build_id: str) -> dict | None:
    for r in load_all(ctx):
        if r["id"].startswith(build_id):
            return r
    return None


def for_tree(ctx, tree: str) -> list[dict]:
    return [r for r in load_all(ctx) if r.get("tree") == tree]


def last_build_for(ctx, tree: str | None) -> dict | None:
    """The newest build of ``tree`` (any target) as shown by `vpatch status`: status, target, when, ..."""
    if not tree:
        return None
    recs = for_tree(ctx, tree)
    if not recs:
        return None
    r = recs[-1]
    return {"id": r["id"], "status": r.get("status"), "target": r.get("target"), "when": r.get("when") or r.get("started"),
            "action": r.get("action"), "duration_s": r.get("duration_s"), "log": r.get("log")}


def successful(ctx, *, target: str, key: str, inputs_hash: str) -> list[dict]:
    """Successful builds of ``target`` with the same build key (arch, env) and inputs hash, oldest first."""
    return [r for r in load_all(ctx) if r.get("status") == STATUS_OK and r.get("target") == target
            and r.get("key") == key and r.get("inputs_hash") == inputs_hash]
