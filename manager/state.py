"""Typed, versioned records for every state file vpatch keeps, validated whenever one is read.

vpatch keeps its state in small JSON files written atomically (:mod:`atomic`):

=====================  =============================================  ================================
record                 file                                           way out when it is damaged
=====================  =============================================  ================================
:class:`Operation`     ``<workspace>/.git/vpatch/operation.json``     ``vpatch abort --force``
:class:`WorkspaceInfo` ``<workspace>/.git/vpatch/workspace.json``     delete it (rebuilt by ``apply``)
:class:`Skipped`       ``<workspace>/.git/vpatch/skipped.json``       delete it (re-decided by ``apply``)
:class:`BisectRecord`  ``.vpatch/bisect/state.json``                  ``vpatch bisect reset``
:class:`BuildRecord`   ``.vpatch/builds/records/<id>.json``           delete it (a build is redone)
=====================  =============================================  ================================

(the results store is SQLite and carries its own ``schema_version``; see ``validation/store.py``).

Every record carries ``version``. A file without one was written before records were versioned and is
read as version 0 when its shape is valid; a file with a newer version than this vpatch knows is refused.
A file that is not JSON, not UTF-8, not an object, or has a field of the wrong type raises
:class:`StateError`: one line naming the file and what is wrong, and a hint naming the way out. The
in-memory form stays a plain ``dict`` (what the engines already pass around and extend, e.g. ``rebase``
keeps its own sub-record in the operation): the models check shape, they do not replace the dicts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from .errors import VpatchError

STATE_VERSION = 1


class StateError(VpatchError):
    """A state file vpatch wrote cannot be read back (damaged, truncated, edited by hand, newer vpatch)."""


class _Record(msgspec.Struct, kw_only=True):
    # msgspec, not pydantic: `vpatch status` reads these on every start, and importing pydantic and
    # defining its models costs more than the whole command may take (issue: start-up <= 150 ms).
    # Unknown fields are kept in the dict and ignored here, as with pydantic's extra="allow".
    version: int = 0


# --- the workspace ------------------------------------------------------------------------------------

class OrigState(msgspec.Struct, kw_only=True):
    branch: str | None
    head: str | None
    branch_head: str | None = None
    base_ref: str | None = None
    skipped: dict[str, str] = {}


class DoneEntry(msgspec.Struct, kw_only=True):
    id: str
    result: str
    commit: str | None = None
    detail: str | None = ""


class Current(msgspec.Struct, kw_only=True):
    id: str
    title: str = ""
    message: dict[str, Any] | None = None
    digest: str | None = None
    conflicts: list[dict[str, Any]] = []
    detail: str | None = ""


class Operation(_Record, kw_only=True):
    """An operation in flight (apply / rebase, stopped at a conflict or killed)."""

    op: str
    series: str
    base: str
    base_commit: str
    branch: str
    source: str = ""
    orig: OrigState
    todo: list[str]
    done: list[DoneEntry]
    current: Current | None = None
    merged: dict[str, str] = {}
    skipped: dict[str, str] = {}
    backup: str | None = None
    started: float | None = None
    tip: str | None = None  # the last commit the engine made (it may be ahead of HEAD: index-only apply)
    pycheck_pending: list[str] = []  # entries committed whose Python check has not been recorded yet


class BranchInfo(msgspec.Struct, kw_only=True):
    base: str
    base_commit: str
    source: str = ""
    series: str = ""


class WorkspaceInfo(_Record, kw_only=True):
    branches: dict[str, BranchInfo] = {}


class Skipped(_Record, kw_only=True):
    """``{branch: {entry id: why}}`` (one key per vpatch branch, beside ``version``)."""

    SHAPE: ClassVar[type] = dict[str, dict[str, str]]  # the keys other than version


# --- bisect and builds ----------------------------------------------------------------------------------

class BisectArgs(msgspec.Struct, kw_only=True):
    metric: str | None = None
    run: str | None = None
    good: str | None = None
    bad: str | None = None
    upstream: bool | None = False


class BisectRecord(_Record, kw_only=True):
    args: BisectArgs
    started: float | None = None
    log: list[dict[str, Any]] = []
    positions: list[dict[str, Any]] = []
    search: str | None = None
    built: list[str] = []
    result: dict[str, Any] | None = None
    confidence: float | None = None
    threshold_pct: float | None = None


class BuildRecord(_Record, kw_only=True):
    id: str
    status: str
    tree: str | None = None
    target: str | None = None
    pid: int | None = None
    started_ns: int | None = None


HINTS: dict[type, str] = {
    Operation: "`vpatch abort --force` forgets the damaged operation and puts the workspace back on a clean HEAD",
    WorkspaceInfo: "delete {path}: `vpatch apply` writes it again",
    Skipped: "delete {path}: `vpatch apply` decides the skipped entries again",
    BisectRecord: "`vpatch bisect reset` removes it (the measurements stay in the results store)",
    BuildRecord: "delete {path}: it only lets vpatch reuse that build",
}
WHAT: dict[type, str] = {
    Operation: "the state of the operation in progress",
    WorkspaceInfo: "the workspace's record of its branches",
    Skipped: "the record of skipped entries",
    BisectRecord: "the bisect state",
    BuildRecord: "a build record",
}


def _why(e: msgspec.ValidationError) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.orig.branch`" as "orig.branch: expected `str`, got `int`"."""
    msg, _, where = str(e).partition(" - at `$")
    where = where.rstrip("`").lstrip(".")
    return f"{where or 'top level'}: {msg[:1].lower()}{msg[1:]}"


def damaged(model: type, path: Path, why: str) -> StateError:
    return StateError(f"{WHAT.get(model, 'a state file')} {path} is damaged ({why})",
                      HINTS.get(model, "delete {path}").format(path=path), data={"state_file": str(path)})


def parse(model: type[_Record], data: Any, path: Path) -> dict:
    """Validate ``data`` (already decoded JSON) as ``model``; return it as a plain dict."""
    if not isinstance(data, dict):
        raise damaged(model, path, f"a JSON {type(data).__name__} where an object belongs")
    version = data.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise damaged(model, path, f"version {version!r} is not a whole number")
    if version > STATE_VERSION:
        raise StateError(f"{path} was written by a newer vpatch (state version {version}, this one knows "
                         f"{STATE_VERSION})", "upgrade vpatch, or " + HINTS[model].format(path=path))
    try:
        if model is Skipped:
            msgspec.convert({k: v for k, v in data.items() if k != "version"}, Skipped.SHAPE)
        else:
            msgspec.convert(data, model)
    except msgspec.ValidationError as e:
        raise damaged(model, path, _why(e)) from None
    return data


def read(model: type[_Record], path: Path, default: Any = None) -> Any:
    """Read and validate ``path``; ``default`` when it does not exist."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return default
    except IsADirectoryError:
        raise damaged(model, path, "a directory, not a file") from None
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}", HINTS[model].format(path=path)) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise damaged(model, path, "not UTF-8 text") from None
    except ValueError as e:
        raise damaged(model, path, f"not JSON: {e}" if raw.strip() else "empty") from None
    return parse(model, data, path)


def stamp(data: dict) -> dict:
    """``data`` with the current ``version`` (what every writer calls)."""
    data["version"] = STATE_VERSION
    return data

