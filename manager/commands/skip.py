"""vpatch skip: leave the entry in conflict out and go on."""
from __future__ import annotations

import click

from ..apply import skip_op
from ..errors import CommandResult
from ..main import run_command
from ..workspace import Workspace
from ._common import loader, pass_ctx, render_done


@click.command("skip")
@pass_ctx
def command(ctx):
    """Drop the entry that stopped the operation (its half-applied changes are discarded) and apply the rest."""
    run_command(ctx, lambda c: CommandResult(skip_op(Workspace(c.workspace), loader)), render=render_done)
