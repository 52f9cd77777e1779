"""Laying one entry onto the workspace (an effect at the edge): patch by ``git apply`` with a 3-way
fallback like ``git am -3``, overlay by writing whole files; then one commit with vpatch's trailers."""
from __future__ import annotations

import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .git import Git
from .series import Entry, Series
from .workspace import DIGEST_TRAILER, ENTRY_TRAILER, Workspace, inside, overlay_files

DEFAULT_AUTHOR = "vpatch <vpatch@vpatch.invalid>"


@dataclass
class Outcome:
    """What happened to one entry: ``clean`` | ``3-way`` | ``conflict`` | ``already-upstream`` | ``empty``."""

    result: str
    commit: str | None = None
    detail: str = ""
    conflicts: list[dict] = field(default_factory=list)  # {file, lines: [..]} or {file, rejected_hunks}
    message: dict | None = None  # what the commit will carry (kept in the state while stopped)


@dataclass
class PatchInfo:
    author_name: str
    author_email: str
    date: str
    subject: str
    body: str
    diff: str

    @property
    def message(self) -> str:
        return self.subject + ("\n\n" + self.body.strip() if self.body.strip() else "") + "\n"


def parse_patch(path: Path, git: Git) -> PatchInfo:
    """Split a format-patch file into author, date, message and diff with ``git mailinfo``."""
    with tempfile.TemporaryDirectory(prefix="vpatch-mailinfo-") as tmp:
        msg, patch = Path(tmp) / "msg", Path(tmp) / "patch"
        out = git.run("mailinfo", "--encoding=UTF-8", str(msg), str(patch), input=Path(path).read_bytes()).out
        fields = {}
        for line in out.splitlines():
            if ": " in line:
                k, v = line.split(": ", 1)
                fields[k] = v
        return PatchInfo(fields.get("Author", ""), fields.get("Email", ""), fields.get("Date", ""),
                         fields.get("Subject", path.stem), msg.read_text(errors="surrogateescape"),
                         patch.read_text(errors="surrogateescape"))


def identity_env(name: str, email: str, date: str) -> dict[str, str]:
    """Commit identity: committer = author, committer date = author date, so re-applying the same
    entries on the same base gives the same commits."""
    return {"GIT_AUTHOR_NAME": name or "unknown", "GIT_AUTHOR_EMAIL": email or "unknown@invalid",
            "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_NAME": name or "unknown",
            "GIT_COMMITTER_EMAIL": email or "unknown@invalid", "GIT_COMMITTER_DATE": date}


def split_author(author: str) -> tuple[str, str]:
    m = re.match(r"^\s*(.*?)\s*<([^>]*)>\s*$", author)
    return (m.group(1), m.group(2)) if m else (author.strip(), "unknown@invalid")


def with_trailers(git: Git, message: str, entry_id: str, digest: str) -> str:
    return git.run("interpret-trailers", "--if-exists", "replace",
                   "--trailer", f"{ENTRY_TRAILER}: {entry_id}", "--trailer", f"{DIGEST_TRAILER}: {digest}",
                   input=message, strip=False).out


def commit(ws: Workspace, message: dict) -> str:
    g = ws.git
    env = identity_env(message["author_name"], message["author_email"], message["date"])
    g.run("commit", "--no-verify", "--allow-empty-message", "-q", "-F", "-", env=env, input=message["text"])
    return g.head() or ""


def conflict_report(ws: Workspace) -> list[dict]:
    """Files in conflict with the lines of their conflict markers, and rejected hunks."""
    report = []
    for f in ws.git.unmerged_paths():
        lines = []
        try:
            for i, line in enumerate((ws.path / f).read_text(errors="replace").splitlines(), 1):
                if line.startswith("<<<<<<<"):
                    lines.append(i)
        except FileNotFoundError:
            pass
        report.append({"file": f, "lines": lines, "hunks": len(lines)})
    return report


def apply_patch_entry(ws: Workspace, series: Series, entry: Entry, digest: str) -> Outcome:
    g = ws.git
    patches_dir = series.path.resolve().parent
    path = patches_dir / entry.patch_file
    info = parse_patch(path, g)
    message = {"author_name": info.author_name, "author_email": info.author_email, "date": info.date,
               "text": with_trailers(g, info.message, entry.id, digest)}
    if not info.diff.strip():
        return Outcome("empty", detail="the patch has no diff", message=message)
    with tempfile.NamedTemporaryFile("w", suffix=".diff", delete=False) as tmp:
        tmp.write(info.diff)
        diff_path = tmp.name
    try:
        if g.run("apply", "--check", "--index", diff_path, check=False).ok:
            g.run("apply", "--index", "--whitespace=nowarn", diff_path)
            return Outcome("clean", commit=commit(ws, message), message=message)
        if g.run("apply", "--check", "--reverse", "--index", diff_path, check=False).ok:
            return Outcome("already-upstream", detail="its change is already in the tree (the patch reverse-applies cleanly)",
                           message=message)
        three = g.run("apply", "--index", "--3way", "--whitespace=nowarn", diff_path, check=False)
        if three.ok and not g.unmerged_paths():
            if not g.run("diff", "--cached", "--quiet", check=False).ok:
                return Outcome("3-way", commit=commit(ws, message), message=message,
                               detail="applied by 3-way merge: the context had moved")
            return Outcome("already-upstream", detail="a 3-way merge of it changes nothing", message=message)
        conflicts = conflict_report(ws)
        if conflicts:
            return Outcome("conflict", conflicts=conflicts, message=message, detail=three.err)
        # no 3-way possible (base blobs unknown): apply what applies, leave .rej files for the rest
        rej = g.run("apply", "--index", "--reject", "--whitespace=nowarn", diff_path, check=False)
        rejected = []
        for line in (rej.err + "\n" + rej.out).splitlines():
            m = re.match(r"Rejected hunk #\d+\.|Applying patch (\S+) with (\d+) reject", line)
            if m and m.group(1):
                rejected.append({"file": m.group(1), "rejected_hunks": int(m.group(2)),
                                 "reject_file": m.group(1) + ".rej"})
        return Outcome("conflict", conflicts=rejected or [{"file": "?", "detail": three.err}], message=message,
                       detail="3-way merge impossible (the patch's base blobs are unknown here): "
                              "rejected hunks are in *.rej files")
    finally:
        os.unlink(diff_path)


def apply_overlay_entry(ws: Workspace, series: Series, entry: Entry, digest: str, base_commit: str) -> Outcome:
    g = ws.git
    overlay_root = series.path.resolve().parent.parent / "overlay"
    files = overlay_files(overlay_root, entry.id)
    author = entry.author or series.header.author or DEFAULT_AUTHOR
    name, email = split_author(author)
    date = g.run("show", "-s", "--format=%cI", base_commit).out
    text = entry.title + ("\n\n" + entry.message.strip() if entry.message else "") + "\n"
    message = {"author_name": name, "author_email": email, "date": date,
               "text": with_trailers(g, text, entry.id, digest)}
    if not files:
        return Outcome("empty", detail=f"overlay/{entry.id}/ holds no files", message=message)
    rels = []
    for rel, src in files:
        target = inside(ws.path, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        mode = 0o755 if src.stat().st_mode & stat.S_IXUSR else 0o644
        os.chmod(target, mode)
        rels.append(rel)
    g.run("add", "--", *rels)
    if g.run("diff", "--cached", "--quiet", check=False).ok:
        return Outcome("already-upstream", detail="every overlay file is already in the tree as it is", message=message)
    return Outcome("clean", commit=commit(ws, message), message=message)
