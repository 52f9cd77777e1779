"""Write workspace commits back into the series: ``refresh``, ``new``, ``import``, ``export``.

``refresh`` is the inverse of ``apply``: every commit on the vpatch branch becomes its entry's patch
file or overlay folder again, and the series order follows the branch. Files are rewritten only when
their content (author, date, message, diff) changed, atomically, so apply + refresh with no edits
changes no byte.
"""
from __future__ import annotations

import re
from pathlib import Path

import tomlkit

from . import atomic
from .errors import VpatchError, WorkspaceError
from .git import Git, Scratch
from .patchfile import render_patch, same_patch, strip_trailers
from .series import ID_RE, Series
from .workspace import Workspace, overlay_files



def _multiline(text: str):
    """``text`` as a TOML multi-line string that starts on the line after its opening quotes. TOML drops
    that first newline when reading; writing it into the value instead (as before) put a blank line at
    the start of every message refresh wrote back."""
    quoted = tomlkit.string(text, multiline=True).as_string()  # '"""' + escaped text + '"""'
    return tomlkit.parse('x = """\n' + quoted[3:])["x"]

def reorder(series_ids: list[str], ws_ids: list[str]) -> list[str]:
    """New series order (pure): entries in the workspace take the workspace's order, in the slots the
    workspace's entries held; the others stay right after the entry they followed; new ids come in
    where the workspace has them."""
    in_ws = set(ws_ids)
    groups: dict[str | None, list[str]] = {None: []}
    anchor: str | None = None
    for sid in series_ids:
        if sid in in_ws:
            anchor = sid
            groups.setdefault(sid, [])
        else:
            groups.setdefault(anchor, []).append(sid)
    known = set(series_ids)
    result = list(groups[None])
    deferred: list[str] = []
    for wid in ws_ids:
        if wid not in known:  # a new entry goes right after the workspace commit it follows
            result.append(wid)
            continue
        result.extend(deferred)
        result.append(wid)
        deferred = groups.get(wid, [])
    result.extend(deferred)
    return result


def slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48].strip("-") or "entry"
    if not ID_RE.match(base):
        base = "e-" + base
    cand, n = base, 2
    while cand in taken:
        cand = f"{base}-{n}"
        n += 1
    return cand


def _sync_overlay(g: Git, sha: str, eid: str, overlay_root: Path) -> list[str]:
    changed = []
    root = overlay_root / eid
    files = g.changed_files(sha)
    wanted = {}
    for status, path in files:
        if status.startswith("D"):
            raise WorkspaceError(f"commit {sha[:10]} (overlay {eid}) deletes {path}",
                                 "an overlay can only add or replace whole files; make the deletion a patch entry")
        wanted[path] = status
    for path in wanted:
        data = g.run_bytes("show", f"{sha}:{path}")
        mode_line = g.run("ls-tree", sha, "--", path).out.split()
        mode = 0o755 if mode_line and mode_line[0] == "100755" else 0o644
        target = root / path
        if not target.exists() or target.read_bytes() != data or (target.stat().st_mode & 0o777) != mode:
            atomic.write_bytes(target, data, mode)
            changed.append(str(target))
    if root.exists():
        for rel, p in overlay_files(overlay_root, eid):
            if rel not in wanted:
                p.unlink()
                changed.append(str(p))
        for d in sorted((x for x in root.rglob("*") if x.is_dir()), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
    return changed


def _load_doc(series: Series) -> tomlkit.TOMLDocument:
    return tomlkit.parse(series.path.read_text(encoding="utf-8"))


def refresh(ws: Workspace, series: Series, ids: list[str] | None) -> dict:
    with ws.lock():
        ws.require_no_operation()
        ws.require_clean("refresh")
        g = ws.git
        applied = ws.applied()
        if not ws.base_commit():
            raise WorkspaceError("the workspace has no vpatch base", "run `vpatch apply` first")
        on = (ws.branch_info() or {}).get("base")
        if on and on != series.base:
            raise WorkspaceError(
                f"the workspace is on {on} but the series is pinned to {series.base}: refreshing would write "
                f"patches made against {on} into a series based on {series.base}",
                f"to move the series, `vpatch rebase --onto {on}`; to edit it, `vpatch apply` (onto {series.base}) first")
        unknown = [i for i in ids or [] if i not in {c.entry_id for c in applied}]
        if unknown:
            raise WorkspaceError(f"no commit of entry {unknown[0]!r} on the workspace branch"
                                 + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                                 "applied entries are: " + (", ".join(c.entry_id or "?" for c in applied) or "(none)"))
        bad = [c for c in applied if not c.entry_id]
        if bad:
            c = bad[0]
            raise WorkspaceError(
                f"commit {c.sha[:10]} ({c.subject!r}) names no entry (no Vpatch-Entry trailer)",
                "give it one: `git commit --amend --trailer 'Vpatch-Entry: <new-id>'` (or make new commits with `vpatch new ID`)")
        patches_dir = series.path.resolve().parent
        overlay_root = patches_dir.parent / "overlay"
        known = {e.id: e for e in series.entries}
        doc = _load_doc(series)
        aot = doc.setdefault("entry", tomlkit.aot())
        tables = {t["id"]: t for t in aot}
        changed_files: list[str] = []
        added: list[str] = []
        for c in applied:
            eid = c.entry_id
            assert eid is not None  # `bad` above: every applied commit names its entry
            if ids and eid not in ids:
                continue
            entry = known.get(eid)
            trailers = g.trailers(c.sha)
            kind = entry.kind if entry else trailers.get("Vpatch-Kind", "patch")
            if entry is None:
                t = tomlkit.table()
                t["id"] = eid
                t["title"] = c.subject
                if kind == "overlay":
                    t["kind"] = "overlay"
                t["area"] = trailers.get("Vpatch-Area", "misc")
                t["upstream"] = "pending"
                tables[eid] = t
                added.append(eid)
            if kind == "patch":
                target = patches_dir / (entry.patch_file if entry else f"{eid}.patch")
                data = render_patch(g, c.sha)
                if not target.exists() or (target.read_bytes() != data and not same_patch(g, target, data)):
                    atomic.write_bytes(target, data)
                    changed_files.append(str(target))
            else:
                changed_files += _sync_overlay(g, c.sha, eid, overlay_root)
                if entry is not None:
                    msg = strip_trailers(g.commit_fields(c.sha)["message"])
                    title, _, body = msg.partition("\n")
                    t = tables[eid]
                    if title.strip() != entry.title:
                        t["title"] = title.strip()
                    if (body.strip() or None) != ((entry.message or "").strip() or None):
                        t["message"] = _multiline(body.strip()) if body.strip() else ""
                        if not body.strip():
                            del t["message"]
        old_order = [t["id"] for t in aot]
        ws_ids = [c.entry_id for c in applied if c.entry_id]
        new_order = reorder(old_order, ws_ids)
        if new_order != old_order:
            new_aot = tomlkit.aot()
            for i in new_order:
                new_aot.append(tables[i])
            doc["entry"] = new_aot
        text = tomlkit.dumps(doc)
        old_text = series.path.read_text(encoding="utf-8")
        if new_order != old_order:
            # tomlkit keeps each table's trailing blank line and adds its own between tables of a new array:
            # one blank line before each [[entry]] again, and the file's own ending
            text = re.sub(r"\n{3,}(?=\[\[entry\]\])", "\n\n", text).rstrip("\n")
            text += "\n" * max(1, len(old_text) - len(old_text.rstrip("\n")))
        if text != old_text:
            atomic.write_text(series.path, text)
            changed_files.append(str(series.path))
        return {"changed": changed_files, "added": added, "order_changed": new_order != old_order,
                "entries": [c.entry_id for c in applied], "unchanged": not changed_files}


def new_entry(ws: Workspace, series: Series, eid: str, title: str, body: str | None, kind: str, area: str,
              author: str | None = None) -> dict:
    """Commit the staged changes as entry ``eid``. Its author: ``author`` ('Name <email>'), else the series'
    ``[series].author``, else git's own identity in the workspace."""
    if not ID_RE.match(eid):
        raise VpatchError(f"{eid!r} is not a valid entry id", "lower-case letters, digits, '.', '_' and '-'")
    if eid in series.ids():
        raise VpatchError(f"entry {eid} already exists in the series", "pick a new id, or amend its commit")
    with ws.lock():
        ws.require_no_operation()
        g = ws.git
        if g.run("diff", "--cached", "--quiet", check=False).ok:
            raise WorkspaceError("nothing is staged", "`git add` the changes that make up the new entry first")
        msg = title + ("\n\n" + body.strip() if body else "") + "\n"
        args = ["interpret-trailers", "--trailer", f"Vpatch-Entry: {eid}", "--trailer", f"Vpatch-Area: {area}"]
        if kind == "overlay":
            args += ["--trailer", "Vpatch-Kind: overlay"]
        text = g.run(*args, input=msg, strip=False).out
        who = author or series.header.author
        if who and not re.match(r"^[^<>]+ <[^<>]*>$", who.strip()):
            raise VpatchError(f"author {who!r} is not 'Name <email>'", "e.g. --author 'Kernel Dev <kd@fork.example>'")
        g.run("commit", "--no-verify", "-q", *(["--author", who.strip()] if who else []), "-F", "-", input=text)
        return {"id": eid, "commit": g.head(), "hint": "`vpatch refresh` adds it to the series"}


def import_commits(git_repo: Path, series: Series, rev_range: str, after: str | None, area: str) -> dict:
    """Import ``rev_range`` of ``git_repo`` as patch entries. ``git_repo`` is only read: the patches are rendered
    in a scratch repository that borrows its objects, so it stays byte-for-byte unchanged (a read-only mirror
    works)."""
    with Scratch(git_repo) as scratch:
        return _import_commits(scratch.source, scratch.git, series, rev_range, after, area)


def _import_commits(src: Git, g: Git, series: Series, rev_range: str, after: str | None, area: str) -> dict:
    shas = src.commits(rev_range)
    if not shas:
        raise VpatchError(f"no commits in {rev_range} of {src.path}")
    patches_dir = series.path.resolve().parent
    doc = _load_doc(series)
    aot = doc.setdefault("entry", tomlkit.aot())
    order = [t["id"] for t in aot]
    if after and after not in order:
        raise VpatchError(f"--after {after}: no such entry", f"entries: {', '.join(order)}")
    taken = set(order)
    new_tables = []
    written = []
    for sha in shas:
        f = g.commit_fields(sha)
        if len(f["parents"].split()) > 1:
            raise VpatchError(f"commit {sha[:10]} is a merge; import takes a linear range")
        eid = g.trailers(sha).get("Vpatch-Entry") or slug(f["subject"], taken)
        if eid in taken:
            eid = slug(eid, taken)
        taken.add(eid)
        target = patches_dir / f"{eid}.patch"
        if target.exists():
            raise VpatchError(f"{target} already exists", "remove it or import under another id")
        atomic.write_bytes(target, render_patch(g, sha))
        written.append(str(target))
        t = tomlkit.table()
        t["id"] = eid
        t["title"] = f["subject"]
        t["area"] = area
        t["upstream"] = "pending"
        new_tables.append(t)
    pos = order.index(after) + 1 if after else len(order)
    tables = list(aot)
    tables[pos:pos] = new_tables
    new_aot = tomlkit.aot()
    for t in tables:
        new_aot.append(t)
    doc["entry"] = new_aot
    atomic.write_text(series.path, tomlkit.dumps(doc))
    return {"imported": [t["id"] for t in new_tables], "files": written}


def export(ws: Workspace, branch: str | None, directory: Path | None, force: bool) -> dict:
    g = ws.git
    base = ws.base_commit()
    if base is None:
        raise WorkspaceError("the workspace has no vpatch base", "run `vpatch apply` first")
    result: dict = {}
    if branch:
        if g.rev(f"refs/heads/{branch}") and not force:
            raise VpatchError(f"branch {branch} already exists in the workspace", "pass --force to move it")
        g.run("branch", "-f", branch, "HEAD")
        result["branch"] = branch
        result["head"] = g.head()
    if directory:
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for i, c in enumerate(ws.applied(), 1):
            p = directory / f"{i:04d}-{c.entry_id or 'commit'}.patch"
            atomic.write_bytes(p, render_patch(g, c.sha))
            files.append(str(p))
        result["files"] = files
    return result
