"""Console output: rich for people, JSON for machines (``--json``), progress for long steps.

With ``--json`` nothing but the final JSON document goes to stdout; progress and notes go to stderr
so that pipelines stay parseable.
"""
from __future__ import annotations

import json
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


@cache
def _console(err: bool) -> Console:
    from rich.console import Console  # imported on first output: `vpatch --help` and JSON runs never pay for it

    return Console(stderr=err, highlight=False, soft_wrap=True, emoji=False)


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


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


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
        self._prog.console.print(*args)
