"""vpatch status: base, workspace, entries applied / pending / skipped, operation in flight."""
from __future__ import annotations

import click
from rich.table import Table

from .. import output
from ..errors import CommandResult
from ._common import run_command
from ..status import workspace_status
from ._common import pass_ctx, series_of


def render(d: dict) -> None:
    output.say(f"[bold]series[/] {d['series']}  base {d['base']}  source {d['source']}")
    if not d["exists"] and d.get("foreign"):
        output.say(f"[yellow]no workspace at {d['workspace']}[/]: the folder is neither a git checkout nor empty, "
                   "so `vpatch apply` refuses it (pass --workspace a new folder)")
    elif not d["exists"]:
        output.say(f"no workspace yet at {d['workspace']} (`vpatch apply` creates it)")
    else:
        output.say(f"[bold]workspace[/] {d['workspace']}  branch {d['branch'] or '(detached)'}  "
                   f"head {(d['head'] or '')[:10]}  tree {(d['tree'] or '')[:10]}")
        if d.get("operation"):
            op = d["operation"]
            cur = (op.get("current") or {}).get("id")
            output.say(f"[bold red]{op['op']} in progress[/]" + (f", stopped at {cur}" if cur else "")
                       + f": {len(op['todo'])} entries to go — `vpatch continue`, `skip` or `abort`")
        for lk in d.get("git_locks") or []:
            output.say(f"[bold red]git lock[/] {lk['path']}: " + (
                f"stale ({lk['why']}): the next vpatch command that changes the workspace removes it"
                if lk["stale"] else f"in use ({lk['why']})"))
        if d.get("dirty"):
            output.say(f"[yellow]uncommitted changes:[/] {len(d['dirty'])} files")
        if d.get("last_build"):
            b = d["last_build"]
            output.say(f"last build of this tree: {b.get('status')} ({b.get('target')}, {b.get('when')})")
    t = Table(box=None, header_style="bold")
    for col in ("entry", "kind", "state", "detail"):
        t.add_column(col)
    colors = {"applied": "green", "pending": "white", "merged": "cyan", "skipped": "cyan", "conflict": "red"}
    for r in d["entries"]:
        detail = r.get("reason") or ""
        if r["state"] == "applied":
            detail = f"{r['commit'][:10]} {r['sync']}"
        t.add_row(r["id"], r["kind"], f"[{colors.get(r['state'], 'white')}]{r['state']}[/]", detail)
    output.say(t)


@click.command("status")
@pass_ctx
def command(ctx):
    """Show the base, the workspace, each entry's state and whether applied commits match their entries."""
    run_command(ctx, lambda c: CommandResult(workspace_status(c, series_of(c))), render=render)
