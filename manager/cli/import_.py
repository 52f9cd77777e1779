"""vpatch import: turn commits into series entries."""
from __future__ import annotations

from pathlib import Path

import click

from .. import output
from ..errors import CommandResult
from ._common import run_command
from ..refresh import import_commits
from ._common import pass_ctx, series_of


@click.command("import")
@click.argument("rev_range")
@click.option("--repo", type=click.Path(path_type=Path), default=None, help="Repository holding the commits [default: the workspace].")
@click.option("--after", metavar="ID", help="Insert after this entry [default: at the end].")
@click.option("--area", default="misc", show_default=True, help="The entry's area in series.toml (csrc, fused_moe, model, rotary, ...).")
@pass_ctx
def command(ctx, rev_range, repo, after, area):
    """Import the commits of REV_RANGE (e.g. upstream/main..fork/topic) as patch entries with their messages."""
    run_command(ctx, lambda c: CommandResult(import_commits(repo or c.workspace, series_of(c), rev_range, after, area)),
                render=lambda d: output.say(f"imported {len(d['imported'])} entries: {', '.join(d['imported'])}"))
