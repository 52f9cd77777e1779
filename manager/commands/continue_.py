"""vpatch continue: go on after the conflict has been resolved and staged."""
from __future__ import annotations

import click

from ..apply import continue_op
from ..errors import CommandResult
from ..main import run_command
from ..workspace import Workspace
from ._common import loader, pass_ctx, render_done


@click.command("continue")
@pass_ctx
def command(ctx):
    """Commit the resolved entry (staged with `git add`) and apply the rest."""
    run_command(ctx, lambda c: CommandResult(continue_op(Workspace(c.workspace), loader)), render=render_done)
