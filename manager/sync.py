"""Does an applied commit still hold exactly what its entry says? (content, not text)

A patch entry is compared by ``git patch-id --stable`` (whitespace- and line-number-insensitive) of the
commit's diff against the patch file's diff, plus its message; an overlay by the blobs of its files.
Together with the ``Vpatch-Digest`` trailer this tells apart "edited in the workspace" (refresh saves it)
from "entry changed on disk since it was applied" (re-apply picks it up).
"""
from __future__ import annotations

import json
from pathlib import Path

from . import atomic
from .entries import parse_patch
from .patchfile import strip_trailers
from .series import Entry
from .workspace import AppliedCommit, Workspace, entry_digest, overlay_files


def commit_matches_entry(ws: Workspace, c: AppliedCommit, entry: Entry, patches_dir: Path, overlay_root: Path) -> bool:
    g = ws.git
    if entry.kind == "patch":
        f = patches_dir / entry.patch_file
        if not f.exists():
            return False
        info = parse_patch(f, g)
        diff = g.run("diff-tree", "-p", "--no-renames", "--full-index", f"{c.sha}^", c.sha, strip=False).out
        same_content = g.patch_id(diff) == g.patch_id(info.diff)
        msg = g.commit_fields(c.sha)["message"]
        return same_content and strip_trailers(msg).strip() == info.message.strip()
    files = dict(overlay_files(overlay_root, entry.id))
    changed = {p for _, p in g.changed_files(c.sha)}
    if changed != set(files):
        return False
    for rel, src in files.items():
        blob = g.run("rev-parse", f"{c.sha}:{rel}", check=False).out
        if blob != g.run("hash-object", str(src)).out:
            return False
    return True


class Memo:
    """:func:`commit_matches_entry`'s answers, kept in ``.git/vpatch/sync-memo.json`` by (commit, entry
    digest). A commit never changes and the digest is the entry's content (patch bytes; overlay paths,
    modes and bytes), so an answer once found holds for that key for good. Without it `vpatch status` of
    an applied 25-entry series ran ~125 git processes (~0.85 s); with it, none after the first run.
    A cache only: a damaged or missing file is an empty memo, a write that fails is skipped."""

    VERSION = 1

    def __init__(self, ws: Workspace):
        self.path = ws.vp_dir / "sync-memo.json"
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
            old = d["answers"] if d.get("version") == self.VERSION else {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            old = {}
        self.old: dict[str, bool] = {k: v for k, v in old.items() if isinstance(v, bool)} if isinstance(old, dict) else {}
        self.now: dict[str, bool] = {}  # the keys asked this run: only these are kept

    def answer(self, key: str, ask) -> bool:
        if key not in self.now:
            self.now[key] = self.old[key] if key in self.old else bool(ask())
        return self.now[key]

    def save(self) -> None:
        if self.now == self.old:
            return
        try:
            atomic.write_bytes(self.path, json.dumps({"version": self.VERSION, "answers": self.now}).encode(), fsync=False)
        except OSError:
            pass


def sync_state(ws: Workspace, c: AppliedCommit, entry: Entry, patches_dir: Path, overlay_root: Path,
               memo: Memo | None = None) -> str:
    """``in-sync`` | ``edited`` (the commit differs from an entry unchanged since apply: refresh saves it) |
    ``stale`` (the entry changed on disk since it was applied: re-apply; `apply --reset` keeps the old
    branch as a backup, so an edit made in the workspace too is not lost)."""
    try:
        digest_now = entry_digest(entry, patches_dir, overlay_root)
    except FileNotFoundError:
        return "missing-entry-files"
    def ask() -> bool:
        return commit_matches_entry(ws, c, entry, patches_dir, overlay_root)

    if memo.answer(f"{c.sha}:{digest_now}", ask) if memo is not None else ask():
        return "in-sync"
    return "edited" if c.digest == digest_now else "stale"
