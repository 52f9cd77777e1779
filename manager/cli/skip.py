"""vpatch skip: leave the entry in conflict out and go on."""
from __future__ import annotations

import click

from ._common import pass_ctx, resume


@click.command("skip")
@pass_ctx
def command(ctx):
    """Drop the entry that stopped the operation (its half-applied changes are discarded) and apply the rest."""
    resume(ctx, "skip")
