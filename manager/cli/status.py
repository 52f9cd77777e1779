"""vpatch status: base, workspace, entries applied / pending / skipped, operation in flight."""
from __future__ import annotations

import click

from .. import output
from ..errors import CommandResult
from ._common import run_command
from ..status import workspace_status
from ._common import pass_ctx, series_of


def render(d: dict) -> None:
    """Plain text, no rich: `status` is the command typed most, and rich's import and table cost a third of it."""
    bold, echo, paint = ("bold",), output.echo, output.paint
    echo(f"{paint('series', *bold)} {d['series']}  base {d['base']}  source {d['source']}")
    if not d["exists"] and d.get("foreign"):
        echo(f"{paint('no workspace at ' + str(d['workspace']), 'yellow')}: the folder is neither a git checkout nor "
             "empty, so `vpatch apply` refuses it (pass --workspace a new folder)")
    elif not d["exists"]:
        echo(f"no workspace yet at {d['workspace']} (`vpatch apply` creates it)")
    else:
        echo(f"{paint('workspace', *bold)} {d['workspace']}  branch {d['branch'] or '(detached)'}  "
             f"head {(d['head'] or '')[:10]}  tree {(d['tree'] or '')[:10]}")
        if d.get("operation"):
            op = d["operation"]
            cur = (op.get("current") or {}).get("id")
            echo(paint(f"{op['op']} in progress", "bold", "red") + (f", stopped at {cur}" if cur else "")
                 + f": {len(op['todo'])} entries to go — `vpatch continue`, `skip` or `abort`")
        for lk in d.get("git_locks") or []:
            echo(f"{paint('git lock', 'bold', 'red')} {lk['path']}: " + (
                f"stale ({lk['why']}): the next vpatch command that changes the workspace removes it"
                if lk["stale"] else f"in use ({lk['why']})"))
        if d.get("dirty"):
            echo(f"{paint('uncommitted changes:', 'yellow')} {len(d['dirty'])} files")
        if d.get("last_build"):
            b = d["last_build"]
            echo(f"last build of this tree: {b.get('status')} ({b.get('target')}, {b.get('when')})")
    colours = {"applied": "green", "pending": "white", "merged": "cyan", "skipped": "cyan", "conflict": "red"}
    rows, styles = [], []
    for r in d["entries"]:
        detail = r.get("reason") or ""
        if r["state"] == "applied":
            detail = f"{r['commit'][:10]} {r['sync']}"
        rows.append([r["id"], r["kind"], r["state"], detail])
        styles.append([(), (), (colours.get(r["state"], "white"),), ()])
    for line in output.table_lines(["entry", "kind", "state", "detail"], rows, styles):
        echo(line)


@click.command("status")
@pass_ctx
def command(ctx):
    """Show the base, the workspace, each entry's state and whether applied commits match their entries."""
    run_command(ctx, lambda c: CommandResult(workspace_status(c, series_of(c))), render=render)
