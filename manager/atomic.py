"""Write files so that a crash leaves either the old or the new content, never half of it."""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any


def write_bytes(path: Path, data: bytes, mode: int | None = None, *, fsync: bool = True) -> None:
    """``fsync`` False: still old-or-new after a crash of the process, but not after one of the machine
    (for caches, whose torn entry reads as damaged and is made again)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    import tempfile  # on first write: read-only commands (`status`, `lint`) never need it

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        elif path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _sweep(path: Path) -> None:
    """Remove temp files of ``path`` left by a writer killed before its rename (its pid is gone)."""
    for t in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = t.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            try:
                t.unlink()
            except FileNotFoundError:
                pass


def alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (None or 0: no process)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    write_bytes(path, text.encode("utf-8"), mode)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
