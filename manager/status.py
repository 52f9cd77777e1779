"""`vpatch status`: where the workspace stands against the series."""
from __future__ import annotations

from .context import Context
from .series import Series, merged_at_or_before
from .sync import Memo, sync_state
from .workspace import NEW_DIR, Workspace


def workspace_status(ctx: Context, series: Series) -> dict:
    ws = Workspace(ctx.workspace)
    ws.check_path()
    data: dict = {"series": str(ctx.series_path), "base": series.base, "source": series.source,
                  "workspace": str(ws.path), "exists": ws.exists()}
    patches_dir = series.path.resolve().parent
    overlay_root = patches_dir.parent / "overlay"
    if not ws.exists():
        # a folder apply will refuse (NEW_DIR is its own half-made clone, which apply finishes)
        data["foreign"] = ws.path.is_dir() and any(p.name != NEW_DIR for p in ws.path.iterdir())
        data["entries"] = [{"id": e.id, "kind": e.kind, "state": "merged" if merged_at_or_before(e, series.base) else "pending",
                            "reason": f"merged upstream in {e.upstream.version}" if merged_at_or_before(e, series.base) else None}
                           for e in series.entries]
        return data
    g = ws.git
    branch = g.head_branch()
    binfo = ws.branch_info(branch) or {}
    base = binfo.get("base", series.base)
    data.update({"branch": branch, "head": g.head(), "tree": g.tree_of("HEAD") if g.head() else None,
                 "workspace_base": base, "base_commit": binfo.get("base_commit"),
                 "workspace_source": binfo.get("source"), "dirty": g.status_porcelain(),
                 "operation": ws.operation(),
                 "git_locks": [lk.as_dict() for lk in ws.git_locks()]})
    commits = ws.applied() if binfo else []
    applied = {c.entry_id: c for c in commits}
    unknown = [c.sha for c in commits if c.entry_id is None]
    memo = Memo(ws)
    skipped = ws.skipped(branch) if branch else {}
    op = data["operation"] or {}
    rows = []
    for e in series.entries:
        row = {"id": e.id, "kind": e.kind, "area": e.area, "title": e.title}
        if e.id in applied:
            c = applied[e.id]
            row.update(state="applied", commit=c.sha, tree=c.tree,
                       sync=sync_state(ws, c, e, patches_dir, overlay_root, memo))
        elif merged_at_or_before(e, base):
            row.update(state="merged", reason=f"merged upstream in {e.upstream.version} (base {base})")
        elif e.id in skipped:
            row.update(state="skipped", reason=skipped[e.id])
        elif (op.get("current") or {}).get("id") == e.id:
            row.update(state="conflict", reason="stopped here: resolve, then `vpatch continue`")
        else:
            row.update(state="pending")
        rows.append(row)
    known = set(series.ids())
    memo.save()
    for c in commits:
        if c.entry_id and c.entry_id not in known:
            rows.append({"id": c.entry_id, "kind": "?", "state": "applied", "commit": c.sha, "tree": c.tree,
                         "sync": "new (not in the series: `vpatch refresh` adds it)"})
    data["entries"] = rows
    data["commits_without_entry"] = unknown
    from . import build_records

    data["last_build"] = build_records.last_build_for(ctx, data["tree"]) if data["tree"] else None
    return data
