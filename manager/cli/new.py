"""vpatch new: commit the staged changes in the workspace as a new entry."""
from __future__ import annotations

import click

from .. import output
from ..errors import CommandResult
from ._common import run_command
from ..refresh import new_entry
from ..workspace import Workspace
from ._common import pass_ctx, series_of


@click.command("new")
@click.argument("entry_id")
@click.option("-t", "--title", required=True, help="One-line title (the commit subject).")
@click.option("-m", "--message", default=None, help="Commit message body.")
@click.option("--area", default="misc", show_default=True, help="The entry's area in series.toml (csrc, fused_moe, model, rotary, ...).")
@click.option("--overlay", is_flag=True, help="Make it an overlay entry (whole files) instead of a patch.")
@click.option("--author", default=None, metavar="'NAME <EMAIL>'",
              help="The entry's author. Default: [series].author in series.toml, else git's user.name/user.email.")
@pass_ctx
def command(ctx, entry_id, title, message, area, overlay, author):
    """Commit what is staged in the workspace as entry ENTRY_ID; `vpatch refresh` then adds it to the series."""
    run_command(ctx, lambda c: CommandResult(new_entry(Workspace(c.workspace), series_of(c), entry_id, title, message,
                                                       "overlay" if overlay else "patch", area, author)),
                render=lambda d: output.say(f"committed {d['id']} as {d['commit'][:10]}; {d['hint']}"))
