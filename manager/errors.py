"""Errors that reach the user: one line saying what went wrong, one saying what to do next.

Every exception vpatch raises on purpose is a :class:`VpatchError`.  The CLI's single handler
(`main.handle_errors`) prints ``error: <message>`` and ``hint: <hint>`` and writes the traceback to a
log file; anything else is a bug and is reported the same way with the log's path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class Terminated(KeyboardInterrupt):
    """SIGTERM reached vpatch (a CI job's timeout, ``kill``): unwinds like Ctrl-C, so every ``with`` block
    runs its exit -- servers and benchmarks vpatch started are stopped, locks released -- then exit 143."""


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in this process (the CLI installs it once at start)."""
    import signal

    def _handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second TERM ends the process at once
        raise Terminated()

    signal.signal(signal.SIGTERM, _handler)


class VpatchError(Exception):
    """A failure the user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, *, data: dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.data = data or {}


@dataclass(frozen=True)
class Location:
    """Where in a user's file a problem is: file, line (1-based, 0 = unknown) and entry id."""

    file: Path | str
    line: int = 0
    entry: str | None = None

    def __str__(self) -> str:
        s = str(self.file)
        if self.line:
            s += f":{self.line}"
        if self.entry:
            s += f" [entry {self.entry}]"
        return s


@dataclass
class Problem:
    """One finding of `vpatch lint` (or of parsing)."""

    where: Location
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        return f"{self.where}: {self.severity}: {self.message}"

    def as_dict(self) -> dict:
        return {
            "file": str(self.where.file),
            "line": self.where.line,
            "entry": self.where.entry,
            "severity": self.severity,
            "message": self.message,
        }


class SeriesError(VpatchError):
    """The series file (or an entry's files) is invalid."""

    def __init__(self, problems: list[Problem], hint: str | None = None):
        self.problems = problems
        first = problems[0] if problems else None
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(
            f"{first}{more}" if first else "invalid series",
            hint or "fix the series file; `vpatch lint` lists every problem",
            data={"problems": [p.as_dict() for p in problems]},
        )


class WorkspaceError(VpatchError):
    """The workspace is in a state the command cannot work on."""


class LockedError(VpatchError):
    exit_code = 3


class StoppedForConflict(VpatchError):
    """An operation stopped at a conflict; the state is saved and resumable."""

    exit_code = 2


@dataclass
class CommandResult:
    """What a command returns: a human summary is printed from it, or `data` as JSON with --json."""

    data: dict = field(default_factory=dict)
    exit_code: int = 0
