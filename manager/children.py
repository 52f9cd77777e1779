"""Processes vpatch starts in a session of their own, made to end with it.

Servers, benchmarks and effect checks run in their own session (a terminal's Ctrl-C must not reach a server
half-way through its shutdown) and are stopped on vpatch's way out; but a second SIGTERM or a kill -9 of
vpatch never reaches that code, and a `vllm serve` -- on the gfx11 box, a GPU's memory -- outlived it by an
hour. :func:`dies_with_vpatch` asks the kernel to send them SIGTERM when vpatch ends, however it ends.
"""
from __future__ import annotations

import shutil
import sys
from functools import cache


def dies_with_vpatch(argv: list[str]) -> list[str]:
    """``argv`` run so that the kernel sends it SIGTERM when the vpatch that started it ends.

    util-linux's ``setpriv --pdeathsig`` sets ``PR_SET_PDEATHSIG`` and execs ``argv`` (the same pid:
    stopping its group works as before). Where setpriv is missing or too old, or ``argv[0]`` cannot be run (so that
    starting it fails as it did), ``argv`` is returned as it is. The signal follows the *thread* that starts
    the process: vpatch starts these from its main thread."""
    setpriv = _setpriv()
    if setpriv is None or shutil.which(argv[0]) is None:
        return argv
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


@cache
def _setpriv() -> str | None:
    """setpriv, where it knows ``--pdeathsig`` (util-linux 2.33 and later)."""
    import subprocess

    path = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if path is None:
        return None
    try:
        said = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "--pdeathsig" in said else None
