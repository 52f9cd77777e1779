"""``vpatch rebase --onto REF``: move the series onto another upstream ref, on the foundation's engine.

1. An index-only :func:`~.upstream.check_series` on REF finds the entries upstream already holds (patch-id,
   reverse-apply, 3-way no-op): they are dropped from the stack and, when the rebase completes, recorded in
   series.toml as ``upstream = { merged = "REF" }``. The engine itself also drops entries it finds upstream.
2. The engine (:func:`~.apply.start_apply` with ``op = "rebase"``) applies the rest onto REF on branch
   ``vpatch/REF``, one commit per entry; at a conflict it stops resumably: ``vpatch continue`` / ``skip`` /
   ``abort`` (or ``vpatch rebase --continue`` / ``--skip`` / ``--abort``).
3. git rerere is on in the workspace and its cache is copied in from ``patches/.resolutions/`` before the
   first entry: a conflict resolved once (by anyone, anywhere the repository is cloned) is replayed, and the
   rebase goes on by itself when every conflicted file of an entry was resolved that way.
4. When it completes (:func:`finish`, the engine's finisher for ``rebase``): new resolutions are copied out
   to ``patches/.resolutions/``, patch files are refreshed from the new commits (only those whose content
   changed), ``[series] base`` becomes REF, and a report is written: ``git range-diff`` of the series before
   (synthesised on the old base from the series files as they were when the rebase started) and after, plus
   a per-entry summary.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any
import time
from pathlib import Path

import tomlkit

from . import atomic, output
from .apply import FINISHERS, continue_op, skip_op, start_apply
from .entries import identity_env, parse_patch, split_author, with_trailers
from .errors import StoppedForConflict, WorkspaceError
from .git import Git
from .patchfile import render_patch, same_patch
from .resolutions import copy_in, copy_out, enable, remaining, store_of
from .series import Series, Upstream, load_series, merged_at_or_before, parse_version
from .sources import resolve_source
from .upstream import check_series
from .workspace import Workspace, branch_for, entry_digest, overlay_files


def start_rebase(ctx, series: Series, onto: str, *, source: str | None = None, reset: bool = False,
                 report: Path | None = None, force: bool = False) -> dict:
    src = resolve_source(source or series.source, ctx.root)
    old_base = series.base
    ws = Workspace(ctx.workspace)
    if ws.exists():
        ws.require_no_operation()
        ws.require_clean("rebase")
        if not force:
            _require_refreshed(ws, series)
    with output.progress(f"checking the series on {onto} (index-only)") as step:
        chk = check_series(series, src, onto, progress=step.detail)
    found = {e["id"]: e for e in chk["entries"] if e["status"] == "already-upstream" and e.get("how") != "declared"}
    for eid, e in found.items():
        output.say(f"[cyan]–[/] {eid}: already upstream in {onto} ({e['how']}): dropped from the stack")
    moved = dataclasses.replace(series, entries=tuple(
        dataclasses.replace(e, upstream=Upstream(state="merged", version=onto)) if e.id in found else e
        for e in series.entries))
    report = Path(report) if report else ctx.state_dir / "reports" / f"rebase-{_safe(old_base)}-to-{_safe(onto)}.txt"
    extra = {"op": "rebase", "finisher_module": "vpatch.manager.rebase",
             "rebase": {"old_base": old_base, "onto": onto, "found": {k: {"how": v.get("how"), "detail": v["detail"],
                                                                          "commit": v.get("commit")}
                                                                      for k, v in found.items()},
                        "check": {e["id"]: e["status"] for e in chk["entries"]}, "report": str(report),
                        "replayed": [], "started": time.time()}}

    def prepare(ws: Workspace, op: dict) -> None:
        g = ws.git
        enable(g)
        op["rebase"]["resolutions_in"] = copy_in(store_of(series.path.resolve().parent), g)
        old_sha = src.ensure(old_base)
        if g.rev(old_sha) is None:
            g.run("fetch", "-q", str(src.repo()), old_sha)
        op["rebase"]["old_base_commit"] = old_sha
        op["rebase"]["old_head"], op["rebase"]["old_commits"] = synthesize(g, series, old_base, old_sha)

    return drive(ws, lambda: start_apply(ctx, moved, base=onto, source=source, upto=None, reset=reset,
                                         op_extra=extra, prepare=prepare))


def _safe(ref: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in ref)[:60]


def _require_refreshed(ws: Workspace, series: Series) -> None:
    """Refuse to move a series whose workspace holds edits not written back (they would be left behind)."""
    g = ws.git
    branch = branch_for(series.base)
    if g.head_branch() != branch or not ws.base_commit():
        return
    pd = series.path.resolve().parent
    known = {e.id: e for e in series.entries}
    from .sync import sync_state
    for c in ws.applied():
        e = known.get(c.entry_id or "")
        if e is None:
            raise WorkspaceError(f"commit {c.sha[:10]} ({c.subject!r}) on {branch} is not an entry of the series",
                                 "`vpatch refresh --all` writes it into the series first (or pass --force)")
        state = sync_state(ws, c, e, pd, pd.parent / "overlay")
        if state == "edited":
            raise WorkspaceError(f"entry {e.id} was edited in the workspace and not written back",
                                 "`vpatch refresh --all` first, so the rebase moves your edits (or pass --force)")


def synthesize(g: Git, series: Series, base: str, base_sha: str) -> tuple[str, dict[str, str]]:
    """The series on ``base`` as commits (index-only, like apply would make them): head, entry id -> commit."""
    import tempfile

    pd = series.path.resolve().parent
    overlay_root = pd.parent / "overlay"
    head = base_sha
    commits: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vpatch-old-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        g.run("read-tree", base_sha, env=env)
        date_base = g.run("show", "-s", "--format=%cI", base_sha).out
        for e in series.entries:
            if merged_at_or_before(e, base):
                continue
            digest = entry_digest(e, pd, overlay_root)
            if e.kind == "patch":
                info = parse_patch(pd / e.patch_file, g)
                diff = Path(tmp) / "p.diff"
                diff.write_text(info.diff, errors="surrogateescape")
                if not g.run("apply", "--cached", "--whitespace=nowarn", str(diff), env=env, check=False).ok:
                    continue
                ident = identity_env(info.author_name, info.author_email, info.date)
                msg = info.message
            else:
                rows = "".join(f"{'100755' if p.stat().st_mode & 0o100 else '100644'} "
                               f"{g.run('hash-object', '-w', str(p)).out}\t{rel}\n" for rel, p in overlay_files(overlay_root, e.id))
                g.run("update-index", "--add", "--index-info", env=env, input=rows)
                name, email = split_author(e.author or series.header.author or "vpatch <vpatch@vpatch.invalid>")
                ident = identity_env(name, email, date_base)
                msg = e.title + ("\n\n" + e.message.strip() if e.message else "") + "\n"
            tree = g.run("write-tree", env=env).out
            head = g.run("commit-tree", tree, "-p", head, "-F", "-", env=ident,
                         input=with_trailers(g, msg, e.id, digest)).out
            commits[e.id] = head
    return head, commits


def drive(ws: Workspace, step):
    """Run an engine step; while it stops at conflicts that rerere resolved from recorded resolutions,
    stage them and go on."""
    while True:
        try:
            return step()
        except StoppedForConflict:
            op = ws.operation()
            if not op or op.get("op") != "rebase" or not _replayed(ws, op):
                raise
            step = lambda: continue_op(ws, _loader)  # noqa: E731


def _replayed(ws: Workspace, op: dict) -> bool:
    g = ws.git
    unmerged = g.unmerged_paths()
    if not unmerged or remaining(g) & set(unmerged):
        return False
    for p in unmerged:
        f = ws.path / p
        if not f.exists() or any(line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in f.read_text(errors="replace").splitlines()):
            return False
    g.run("add", "--", *unmerged)
    cur = (op.get("current") or {}).get("id")
    op["rebase"]["replayed"].append(cur)
    ws.save_operation(op)
    output.say(f"[yellow]✓[/] {cur}: conflict resolved by a recorded resolution (patches/.resolutions/)")
    return True


def _loader(path: str) -> Series:
    from .lint import load_checked
    return load_checked(Path(path))


def continue_rebase(ws: Workspace) -> dict:
    return drive(ws, lambda: continue_op(ws, _loader))


def skip_rebase(ws: Workspace) -> dict:
    return drive(ws, lambda: skip_op(ws, _loader))


# --- completion ----------------------------------------------------------------------------------------

def finish(ws: Workspace, op: dict) -> dict:
    """The engine's finisher for ``rebase``: resolutions out, series.toml and patch files, the report."""
    g = ws.git
    rb = op["rebase"]
    series_path = Path(op["series"])
    pd = series_path.parent
    onto = rb["onto"]
    new_resolutions = copy_out(g, store_of(pd))
    merged = dict(rb["found"])
    for d in op["done"]:
        if d["result"] == "already-upstream":
            merged.setdefault(d["id"], {"how": "engine", "detail": d.get("detail", "")})
    skipped = [d["id"] for d in op["done"] if d["result"] == "skipped"]
    recorded, not_recorded = _update_series(series_path, onto, list(merged), skipped, rb["old_base"])
    series = load_series(series_path)
    written = refresh_patches(ws, series)
    summary = entry_summary(g, series, op, merged)
    rd = g.run("range-diff", "--no-color", f"{rb['old_base_commit']}..{rb['old_head']}",
               f"{op['base_commit']}..{g.head()}", check=False).out
    text = render_report(rb, op, summary, rd, g.head())
    atomic.write_text(Path(rb["report"]), text)
    out: dict[str, Any] = {"rebase": {"old_base": rb["old_base"], "onto": onto, "entries": summary, "range_diff": rd,
                      "report": rb["report"], "recorded_merged": recorded, "patches_written": written,
                      "resolutions_recorded": new_resolutions, "resolutions_replayed": rb["replayed"]}}
    if not_recorded:
        out["rebase"]["not_recorded"] = not_recorded
    out["rebase"]["skipped"] = [{"id": eid, "todo": skipped_todo(eid, onto)} for eid in skipped]
    out["rebase"]["pycheck"] = {d["id"]: d["pycheck"] for d in op["done"] if d.get("pycheck")}
    out["hint"] = (f"series.toml now has base = {onto!r}; review {rb['report']} and commit patches/ "
                   "(including patches/.resolutions/)")
    if skipped:
        out["hint"] = (f"{len(skipped)} skipped entr{'y' if len(skipped) == 1 else 'ies'} still hold patches for "
                       f"{rb['old_base']} that do not apply on {onto} (marked so in series.toml): "
                       + "; ".join(f"{eid}: {skipped_todo(eid, onto)}" for eid in skipped))
    return out


def skipped_todo(eid: str, onto: str) -> str:
    """What to do with an entry left out of a rebase by ``vpatch skip``."""
    return (f"either drop it (if {onto} holds its change: set `upstream = {{ merged = \"{onto}\" }}` on it, or "
            f"delete the entry and its patch) or port it (`vpatch apply` stops at it; resolve, `vpatch continue`, "
            f"then `vpatch refresh {eid}`)")


FINISHERS["rebase"] = finish


def _update_series(path: Path, onto: str, merged: list[str], skipped: Sequence[str] = (),
                   old_base: str = "") -> tuple[list[str], list[str]]:
    """Set the new base, record found-upstream entries as merged, and say in the file itself which entries'
    patches were left for the old base (skipped) or could not be recorded (``--onto`` is not a release)."""
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    doc["series"]["base"] = onto
    recorded, not_recorded = [], []
    for t in doc.get("entry", []):
        if t.get("id") in skipped:
            t.add(tomlkit.comment(f"vpatch rebase {old_base} -> {onto}: skipped; its patch is still for {old_base} "
                                  f"and does not apply on {onto}: port it (`vpatch apply`, resolve, `vpatch "
                                  f"continue`, `vpatch refresh {t['id']}`) or drop it"))
        if t.get("id") in merged:
            if parse_version(onto) is None:
                not_recorded.append(t["id"])  # `merged` takes a release version; a sha or branch can't be recorded
                t.add(tomlkit.comment(f"vpatch rebase {old_base} -> {onto}: found upstream in {onto} (not a "
                                      "release, so not recorded as merged): set `upstream = { merged = \"vX.Y.Z\" }` "
                                      "with the first release that holds it"))
                continue
            # parsed, not built, so it is spelled like the hand-written ones: { merged = "vX.Y.Z" }
            t["upstream"] = tomlkit.parse(f"x = {{ merged = {tomlkit.string(onto).as_string()} }}")["x"]
            recorded.append(t["id"])
    atomic.write_text(path, tomlkit.dumps(doc))
    return recorded, not_recorded


def refresh_patches(ws: Workspace, series: Series) -> list[str]:
    """Write the new commits back into their patch files where the content changed (no lock taken: this runs
    inside the engine, which holds the workspace lock)."""
    g = ws.git
    pd = series.path.resolve().parent
    known = {e.id: e for e in series.entries}
    written = []
    for c in ws.applied():
        e = known.get(c.entry_id or "")
        if e is None or e.kind != "patch":
            continue
        target = pd / e.patch_file
        data = render_patch(g, c.sha)
        if not target.exists() or (target.read_bytes() != data and not same_patch(g, target, data)):
            atomic.write_bytes(target, data)
            written.append(str(target))
    return written


def _pid(g: Git, sha: str | None) -> str | None:
    if not sha:
        return None
    diff = g.run("diff-tree", "-p", "--no-renames", f"{sha}^", sha, strip=False).out
    return g.patch_id(diff) if diff.strip() else None


def entry_summary(g: Git, series: Series, op: dict, merged: dict) -> list[dict]:
    rb = op["rebase"]
    done = {d["id"]: d for d in op["done"]}
    rows = []
    for e in series.entries:
        old = rb["old_commits"].get(e.id)
        row = {"id": e.id, "old_commit": old, "check": rb["check"].get(e.id)}
        if e.id in merged:
            row.update(result="dropped: already upstream", how=merged[e.id].get("how"), detail=merged[e.id].get("detail"))
        elif e.id in op["merged"]:
            row.update(result="not applied: recorded merged", detail=op["merged"][e.id])
        elif e.id in done:
            d = done[e.id]
            row.update(result=d["result"] + (" (recorded resolution)" if e.id in rb["replayed"] else ""),
                       new_commit=d.get("commit"), detail=d.get("detail", ""))
            if d.get("commit") and old:
                row["change"] = "same change" if _pid(g, old) == _pid(g, d["commit"]) else "change differs (see range-diff)"
        else:
            row.update(result="not applied")
        rows.append(row)
    return rows


def render_report(rb: dict, op: dict, summary: list[dict], rd: str, head: str | None) -> str:
    lines = [f"vpatch rebase {rb['old_base']} -> {rb['onto']}",
             f"old: {rb['old_base_commit'][:12]}..{rb['old_head'][:12]}   new: {op['base_commit'][:12]}..{(head or '')[:12]}",
             "", "per entry:"]
    for r in summary:
        extra = "; ".join(x for x in (r.get("how"), r.get("change"), r.get("detail")) if x)
        lines.append(f"  {r['id']:<40} {r['result']}" + (f"  ({extra})" if extra else ""))
    lines += ["", "git range-diff old-base..old-head new-base..new-head:", rd or "(no commits)", ""]
    return "\n".join(lines)
