"""``vpatch validate --run CMD``: run a user's command N times; each run prints one number.

The command is split with ``shlex.split`` (never ``shell=True``); ``{python}`` and other placeholders
are filled per word.  The number is the last non-empty line of stdout (so a command may log before
it); anything else is an error that quotes the output.  Each run is its own process, hence its own
boot (replication unit) in the store.
"""
from __future__ import annotations

import math
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vpatch.validation.runners.process import RunnerError, split_command


@dataclass(frozen=True)
class CommandRun:
    value: float
    wall_s: float
    boot_id: str


def parse_number(stdout: str, *, argv: Sequence[str] = ()) -> float:
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    shown = " ".join(argv)
    if not lines:
        raise RunnerError(f"`{shown}` printed nothing", "the command must print one number (its last line)")
    last = lines[-1]
    try:
        v = float(last)
    except ValueError:
        raise RunnerError(f"`{shown}` printed {last!r} last, not a number",
                          "make its last line of output a bare number, e.g. 13.72") from None
    if not math.isfinite(v):
        raise RunnerError(f"`{shown}` printed {last!r}, not a finite number")
    return v


def run_command(cmd: str | Sequence[str], n: int = 1, *, env: Mapping[str, str] | None = None,
                cwd: Path | None = None, timeout_s: float | None = 3600,
                placeholders: Mapping[str, str] | None = None) -> list[CommandRun]:
    """Run ``cmd`` ``n`` times in sequence; returns each run's number, wall time and a fresh boot id."""
    if n < 1:
        raise RunnerError("the number of runs must be at least 1")
    argv = split_command(cmd, placeholders)
    runs = []
    for i in range(n):
        t0 = time.monotonic()
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=dict(env) if env is not None else None,
                               cwd=cwd, timeout=timeout_s)
        except FileNotFoundError:
            raise RunnerError(f"`{argv[0]}`: command not found", "give a path, or put it on PATH") from None
        except subprocess.TimeoutExpired:
            raise RunnerError(f"`{' '.join(argv)}` (run {i + 1}/{n}) ran past {timeout_s} s") from None
        wall = time.monotonic() - t0
        if r.returncode != 0:
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
            raise RunnerError(f"`{' '.join(argv)}` (run {i + 1}/{n}) failed (exit {r.returncode}):\n{tail}")
        runs.append(CommandRun(parse_number(r.stdout, argv=argv), wall, uuid.uuid4().hex))
    return runs
