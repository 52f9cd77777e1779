"""vpatch export: write the applied series out as a branch or as patch files."""
from __future__ import annotations

from pathlib import Path

import click

from .. import output
from ..errors import CommandResult, VpatchError
from ._common import run_command
from ..refresh import export
from ..workspace import Workspace
from ._common import pass_ctx


@click.command("export")
@click.option("--branch", default=None, help="Create this branch in the workspace at the top of the series.")
@click.option("--format-patch", "directory", type=click.Path(path_type=Path), default=None,
              help="Write numbered patches (vpatch trailers removed) into this directory.")
@click.option("--force", is_flag=True, help="Move an existing branch.")
@pass_ctx
def command(ctx, branch, directory, force):
    """Export the applied series: a branch to push or review, or mailable patches."""

    def body(ctx):
        if not branch and not directory:
            raise VpatchError("say what to export: --branch NAME and/or --format-patch DIR")
        return CommandResult(export(Workspace(ctx.workspace), branch, directory, force))

    def render(d):
        if d.get("branch"):
            output.say(f"branch {d['branch']} at {d['head'][:10]}")
        for f in d.get("files", []):
            output.say(f"wrote {f}")

    run_command(ctx, body, render=render)
