"""An exclusive lock on a workspace, so two vpatch processes never work one tree.

It is an ``fcntl.flock`` on a file: the kernel drops it when the holder dies, even by ``kill -9``,
so a crash never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LockedError


@contextmanager
def locked(path: Path, what: str = "workspace") -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            try:
                holder = os.pread(fd, 64, 0).decode().strip()
            except OSError:
                pass
            raise LockedError(
                f"another vpatch process is working on this {what} (lock {path}"
                + (f", pid {holder}" if holder else "") + ")",
                "wait for it to finish; the lock goes away by itself when that process ends",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
