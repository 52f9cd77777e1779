"""vpatch apply: lay the series onto the base, one commit per entry."""
from __future__ import annotations

import click

from ..apply import start_apply
from ..errors import CommandResult
from ._common import run_command
from ._common import pass_ctx, render_done, series_of


@click.command("apply")
@click.option("--base", help="vLLM ref to apply onto [default: the series' base].")
@click.option("--source", help="Where the base comes from: 'pypi', a git URL or a local repository [default: the series' source].")
@click.option("--upto", metavar="ID", help="Stop after this entry.")
@click.option("--reset", is_flag=True, help="Start over from the base; the old branch is kept under refs/vpatch/backup/.")
@pass_ctx
def command(ctx, base, source, upto, reset):
    """Apply the series onto BASE in the workspace, one commit per entry.

    Entries merged upstream at or before the base are skipped and said so; an entry whose change is
    already in the tree is reported "already-upstream". At a conflict the command stops, the tree
    holds the conflict markers, and `vpatch continue` / `skip` / `abort` take it from there.
    Re-running apply keeps the commits that still match the series and applies the rest."""

    def body(ctx):
        return CommandResult(start_apply(ctx, series_of(ctx), base=base, source=source, upto=upto, reset=reset))

    run_command(ctx, body, render=render_done)
