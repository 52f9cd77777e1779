"""Conflict resolutions kept in the repository: ``patches/.resolutions/`` holds git rerere's cache.

git rerere records, for each conflict (identified by a hash of its two sides), the conflicted text
(``preimage``) and the text the human made of it (``postimage``); when the same conflict shows up again,
rerere writes the recorded resolution into the file. The cache normally lives in ``.git/rr-cache`` of one
checkout; vpatch copies it in before a rebase and copies completed resolutions out when the rebase finishes,
so they are committed with the series and every clone, teammate and CI job replays a resolution made once.

Copying (rather than pointing ``.git/rr-cache`` at the folder with a symbolic link) keeps half-done
conflicts (a preimage without a postimage) out of the repository, and never writes through a link.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .git import Git

DIRNAME = ".resolutions"


def store_of(patches_dir: Path) -> Path:
    return Path(patches_dir) / DIRNAME


def enable(g: Git) -> None:
    """Turn rerere on in the workspace (``git apply --3way`` and ``git commit`` then record and replay)."""
    g.run("config", "rerere.enabled", "true")
    g.run("config", "rerere.autoUpdate", "false")  # the engine must still see the path as unmerged


def _complete(d: Path) -> bool:
    return d.is_dir() and any(p.name.startswith("postimage") for p in d.iterdir())


def copy_in(store: Path, g: Git) -> list[str]:
    """Resolutions from the repository into the workspace's rr-cache (existing ones are kept)."""
    rr = g.git_dir / "rr-cache"
    added: list[str] = []
    if not store.is_dir():
        return added
    for d in sorted(store.iterdir()):
        if not _complete(d):
            continue
        target = rr / d.name
        if target.exists() and _complete(target):
            continue
        target.mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():
            if f.is_file() and not f.is_symlink():
                shutil.copyfile(f, target / f.name)
        added.append(d.name)
    return added


def copy_out(g: Git, store: Path) -> list[str]:
    """Completed resolutions of the workspace's rr-cache into the repository; returns the new ones."""
    rr = g.git_dir / "rr-cache"
    new: list[str] = []
    if not rr.is_dir():
        return new
    for d in sorted(rr.iterdir()):
        if not _complete(d):
            continue
        target = store / d.name
        files = {f.name: f.read_bytes() for f in d.iterdir() if f.is_file() and not f.name.startswith("thisimage")}
        if target.is_dir() and all((target / n).exists() and (target / n).read_bytes() == b for n, b in files.items()):
            continue
        from .atomic import write_bytes
        for name, data in files.items():
            write_bytes(target / name, data)
        new.append(d.name)
    return new


def remaining(g: Git) -> set[str]:
    """Paths still in conflict that rerere did not resolve from a recorded resolution."""
    out = g.run("rerere", "remaining", check=False).out
    return set(out.splitlines()) if out else set()
