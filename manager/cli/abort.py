"""vpatch abort: undo the operation in progress."""
from __future__ import annotations

import click

from .. import output
from ..apply import abort_op
from ..errors import CommandResult
from ._common import run_command
from ..workspace import Workspace
from ._common import pass_ctx


@click.command("abort")
@click.option("--force", is_flag=True,
              help="If the operation's state file is damaged, forget it and reset the index and tracked files to HEAD.")
@pass_ctx
def command(ctx, force):
    """Restore the branch, HEAD, index and work tree of before the operation (also after a crash)."""
    run_command(ctx, lambda c: CommandResult(abort_op(Workspace(c.workspace), force=force)),
                render=lambda d: output.say(f"aborted {d['aborted']}: back on {d['branch'] or 'detached HEAD'} at {d['head'][:10]}"))
