"""Prefixes: the base plus the first k applied entries, identified by their tree hash.

``prefixes(ws)`` lists them from the workspace branch (position 0 = the base). ``materialize`` checks a
prefix out into a separate git worktree (``.vpatch/prefix`` beside the workspace) so measuring or
building a prefix never moves the user's branch or touches their work tree.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import WorkspaceError
from .file_lock import locked
from .git import run_git
from .workspace import Workspace


@dataclass(frozen=True)
class Prefix:
    position: int          # 0 = base, k = base + first k applied entries
    entry_id: str | None   # the entry whose commit ends this prefix (None for the base)
    commit: str
    tree: str

    @property
    def label(self) -> str:
        return self.entry_id or "base"


def prefixes(ws: Workspace, head: str = "HEAD") -> list[Prefix]:
    g = ws.git
    base = ws.base_commit()
    if base is None:
        raise WorkspaceError("the workspace has no vpatch base", "run `vpatch apply` first")
    out = [Prefix(0, None, base, g.tree_of(base))]
    for i, c in enumerate(ws.applied(head), 1):
        out.append(Prefix(i, c.entry_id, c.sha, c.tree))
    return out


def select(prefs: list[Prefix], spec: str | None) -> list[Prefix]:
    """``A..B`` (entry ids or positions, inclusive), a single id, or None for all."""
    if not spec:
        return prefs

    def pos(token: str) -> int:
        if token in ("", "base"):
            return 0
        if token.isdigit():
            return int(token)
        for p in prefs:
            if p.entry_id == token:
                return p.position
        raise WorkspaceError(f"no applied entry {token!r}", "`vpatch status` lists the applied entries")

    if ".." in spec:
        a, b = spec.split("..", 1)
        lo, hi = pos(a), pos(b) if b else prefs[-1].position
    else:
        lo = hi = pos(spec)
    return [p for p in prefs if lo <= p.position <= hi]


def materialize(ws: Workspace, prefix: Prefix, where: Path | None = None) -> Path:
    """Check ``prefix`` out (detached) in a worktree reused across calls; return its path."""
    tree_dir = where or ws.path.parent / "prefix"
    with locked(tree_dir.parent / f".{tree_dir.name}.lock", "prefix worktree"):
        g = ws.git
        if not (tree_dir / ".git").exists():
            g.run("worktree", "prune")
            tree_dir.parent.mkdir(parents=True, exist_ok=True)
            g.run("worktree", "add", "-q", "--detach", "-f", str(tree_dir), prefix.commit)
        else:
            r = run_git("checkout", "-q", "-f", "--detach", prefix.commit, cwd=tree_dir, check=False)
            if not r.ok:
                raise WorkspaceError(f"cannot check out prefix {prefix.label} in {tree_dir}: {r.err}")
            run_git("clean", "-q", "-fdx", "-e", "build/", "-e", "*.egg-info", cwd=tree_dir, check=False)
    return tree_dir
