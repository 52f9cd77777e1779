"""vpatch continue: go on after the conflict has been resolved and staged."""
from __future__ import annotations

import click

from ._common import pass_ctx, resume


@click.command("continue")
@pass_ctx
def command(ctx):
    """Commit the resolved entry (staged with `git add`) and apply the rest."""
    resume(ctx, "continue")
