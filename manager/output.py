"""Console output: rich for people, JSON for machines (``--json``), progress for long steps.

With ``--json`` nothing but the final JSON document goes to stdout; progress and notes go to stderr
so that pipelines stay parseable.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

_state = {"json": False, "quiet": False}


class _Stream:
    """stdout or stderr, for a reader that may leave early (`vpatch apply | head -1`): once a write finds
    the pipe closed, output goes nowhere and the command finishes its work. Without this the first
    BrokenPipeError stopped an apply half-way and left its operation in flight for `abort`."""

    def __init__(self, err: bool):
        self._err = err

    @property
    def _s(self) -> Any:  # looked up on each write, as rich does: tests and callers may swap sys.stdout
        return sys.stderr if self._err else sys.stdout

    def write(self, text: str) -> int:
        try:
            return self._s.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._s.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        try:  # the fd to /dev/null, so that Python's own flush at exit finds nothing to complain about
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._s.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self._s, name)


@cache
def _stream(err: bool) -> _Stream:
    return _Stream(err)


@cache
def _console(err: bool) -> Console:
    from rich.console import Console  # imported on first output: `vpatch --help` and JSON runs never pay for it

    return Console(file=_stream(err), highlight=False, soft_wrap=True, emoji=False)  # type: ignore[arg-type]


def __getattr__(name: str) -> Any:  # output.stdout / output.stderr, made on first use
    if name in ("stdout", "stderr"):
        return _console(name == "stderr")
    raise AttributeError(name)


def set_mode(*, json_mode: bool = False, quiet: bool = False) -> None:
    _state["json"] = json_mode
    _state["quiet"] = quiet


def json_mode() -> bool:
    return _state["json"]


def human() -> Console:
    """The console for human-readable output (stderr in --json mode, so stdout stays JSON)."""
    return _console(_state["json"])


def say(*args: Any, **kw: Any) -> None:
    if not _state["quiet"]:
        human().print(*args, **kw)


def warn(*args: Any, **kw: Any) -> None:
    """Something the user must see even with --quiet (broken Python an entry left behind)."""
    human().print(*args, **kw)


# Plain output without rich, for the commands whose start-up counts (`status`): importing rich's console and
# table and rendering a table through it cost ~50 ms of a ~180 ms `vpatch status`.
_ANSI = {"bold": "1", "red": "31", "green": "32", "yellow": "33", "cyan": "36", "white": "37"}


def _colour() -> bool:
    """Colour as rich decides it: FORCE_COLOR forces it, NO_COLOR or TERM=dumb turn it off, else a terminal."""
    if os.environ.get("FORCE_COLOR"):
        return True
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(_stream(_state["json"]).isatty())
    except (AttributeError, ValueError):
        return False


def paint(text: str, *styles: str) -> str:
    """`text` in the given styles (keys of _ANSI) when the human stream shows colour, else unchanged."""
    if not styles or not text or not _colour():
        return text
    return f"\x1b[{';'.join(_ANSI[s] for s in styles)}m{text}\x1b[0m"


def echo(text: str) -> None:
    """One line of plain text (no markup) to the human stream."""
    if not _state["quiet"]:
        s = _stream(_state["json"])
        s.write(text + "\n")
        s.flush()


def table_lines(header: list[str], rows: list[list[str]], styles: list[list[tuple[str, ...]]] | None = None) -> list[str]:
    """Columns padded to their widest cell, one space before and two between, header in bold; `styles[i][j]`
    paints cell j of row i. Cells are never cut or wrapped: a pipe gets them whole."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str], cell_styles: list[tuple[str, ...]]) -> str:
        parts = [paint(c.ljust(w) if j < len(cells) - 1 else c, *st)
                 for j, (c, w, st) in enumerate(zip(cells, widths, cell_styles, strict=True))]
        return (" " + "  ".join(parts)).rstrip()

    out = [line(header, [("bold",)] * len(header))]
    for i, r in enumerate(rows):
        out.append(line(r, styles[i] if styles else [()] * len(r)))
    return out


def emit_json(data: Any) -> None:
    out = _stream(False)
    out.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    out.flush()


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Step]:
    """A progress bar (or spinner when total is None) on stderr, showing phase and elapsed time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    prog = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=_console(True),
        transient=total is None,
        disable=_state["quiet"],
    )
    with prog:
        task = prog.add_task(description, total=total, detail="")
        yield Step(prog, task)


class Step:
    def __init__(self, prog: Progress, task: Any):
        self._prog, self._task = prog, task
        self.started = time.monotonic()

    def advance(self, n: int = 1, detail: str | None = None) -> None:
        kw: dict[str, Any] = {"detail": detail} if detail is not None else {}
        self._prog.update(self._task, advance=n, **kw)

    def detail(self, text: str) -> None:
        self._prog.update(self._task, detail=text)

    def log(self, *args: Any) -> None:
        """A line above the bar (an entry applied, a step done): left out with --quiet, like the bar."""
        if not _state["quiet"]:
            self._prog.console.print(*args)
