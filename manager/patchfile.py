"""Patch files as vpatch writes them: ``git format-patch`` of a commit with vpatch's trailers removed,
with a stable form (zero commit id, no signature), so a round trip changes no byte."""
from __future__ import annotations

from pathlib import Path

from .entries import identity_env, parse_patch
from .git import Git

VPATCH_TRAILERS = ("Vpatch-Entry:", "Vpatch-Digest:", "Vpatch-Kind:", "Vpatch-Area:")


def strip_trailers(message: str) -> str:
    lines = [line for line in message.rstrip("\n").splitlines() if not line.startswith(VPATCH_TRAILERS)]
    return "\n".join(lines).rstrip() + "\n"


def render_patch(g: Git, sha: str) -> bytes:
    """The canonical patch file of commit ``sha``."""
    f = g.commit_fields(sha)
    parent = f["parents"].split()[0] if f["parents"] else None
    tree = g.tree_of(sha)
    env = identity_env(f["author_name"], f["author_email"], f["author_date"])
    args = ["commit-tree", tree, "-F", "-"]
    if parent:
        args += ["-p", parent]
    clean = g.run(*args, env=env, input=strip_trailers(f["message"])).out
    return g.run_bytes("format-patch", "-1", "--stdout", "--zero-commit", "--no-signature", "--no-numbered", clean)


def same_patch(g: Git, a: Path | bytes, b: Path | bytes) -> bool:
    """Same author, date, message and content (patch-id), whatever the formatting."""
    import tempfile

    infos = []
    for x in (a, b):
        if isinstance(x, bytes):
            with tempfile.NamedTemporaryFile(suffix=".patch", delete=False) as t:
                t.write(x)
            p = Path(t.name)
            try:
                infos.append(parse_patch(p, g))
            finally:
                p.unlink()
        else:
            infos.append(parse_patch(Path(x), g))
    ia, ib = infos

    import email.utils  # here, not at the top: `status` imports this module and never compares dates

    def when(d: str):
        try:
            return email.utils.parsedate_to_datetime(d)
        except (TypeError, ValueError):
            return d

    return (ia.author_name, ia.author_email, when(ia.date), ia.message.strip()) == \
        (ib.author_name, ib.author_email, when(ib.date), ib.message.strip()) and \
        g.patch_id(ia.diff) == g.patch_id(ib.diff)
