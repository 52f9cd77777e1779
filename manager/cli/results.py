"""vpatch results: export and merge results stores (shards from several machines)."""
from __future__ import annotations

from pathlib import Path

import click

from .. import output
from ..errors import CommandResult
from ._common import run_command
from ._common import pass_ctx


@click.group("results")
def command():
    """Export or merge results stores."""


def _default(ctx, store):
    return Path(store) if store else ctx.state_dir / "results.sqlite"


@command.command("export")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--store", default=None, type=click.Path(), help="The results store [default: .vpatch/results.sqlite beside patches/].")
@pass_ctx
def export_cmd(ctx, dest, store):
    """Copy the store to DEST (a consistent snapshot, safe while another process writes)."""
    from vpatch.validation.store import open_store

    def body(ctx):
        with open_store(_default(ctx, store), create=False) as s:
            p = s.export(dest)
            return CommandResult({"exported": str(p), "counts": s.counts()})

    run_command(ctx, body, render=lambda d: output.say(f"exported {d['counts']} to {d['exported']}"))


@command.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--store", default=None, type=click.Path(), help="The results store [default: .vpatch/results.sqlite beside patches/].")
@pass_ctx
def merge_cmd(ctx, shards, store):
    """Merge SHARDS (stores from other machines) into the store; idempotent."""
    from vpatch.validation.store import open_store

    def body(ctx):
        added = {}
        with open_store(_default(ctx, store)) as s:
            for sh in shards:
                added[str(sh)] = s.merge(sh)
            return CommandResult({"store": str(s.path), "added": added, "counts": s.counts()})

    run_command(ctx, body, render=lambda d: output.say(f"merged {len(d['added'])} shards into {d['store']}: {d['counts']}"))
