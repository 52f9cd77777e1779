"""vpatch refresh: write workspace commits back into patches/, overlay/ and the series order."""
from __future__ import annotations

import click

from .. import output
from ..errors import CommandResult, VpatchError
from ._common import run_command
from ..refresh import refresh
from ..workspace import Workspace
from ._common import pass_ctx, series_of


@click.command("refresh")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Refresh every applied entry.")
@pass_ctx
def command(ctx, ids, all_):
    """After editing commits in the workspace (amend, fixup, rebase -i, reorder, `vpatch new`), write
    them back. Only files whose content changed are rewritten; refuses over uncommitted changes."""

    def body(ctx):
        if not ids and not all_:
            raise VpatchError("name the entries to refresh, or pass --all")
        return CommandResult(refresh(Workspace(ctx.workspace), series_of(ctx), list(ids) or None))

    def render(d):
        if d["unchanged"]:
            output.say("nothing changed: patches/ and overlay/ already match the workspace")
        for f in d["changed"]:
            output.say(f"wrote {f}")
        for a in d["added"]:
            output.say(f"added entry {a} to the series")

    run_command(ctx, body, render=render)
