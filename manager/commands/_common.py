"""Shared pieces of the verb modules: loading the series, options, small renderers."""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .. import output
from ..context import Context
from ..lint import load_checked
from ..series import Series

pass_ctx = click.make_pass_decorator(Context)


def series_of(ctx: Context) -> Series:
    return load_checked(ctx.series_path)


def loader(path: str) -> Series:
    return load_checked(Path(path))


def render_done(data: dict) -> None:
    if data.get("merged"):
        for eid, why in data["merged"].items():
            output.say(f"[cyan]–[/] {eid}: skipped, {why}")
    t = Table(show_header=True, header_style="bold", box=None)
    t.add_column("entry")
    t.add_column("result")
    t.add_column("commit")
    for d in data.get("done", []):
        t.add_row(d["id"], d["result"] + (f" ({d['detail']})" if d.get("detail") and d["result"] not in ("clean", "kept") else ""),
                  (d.get("commit") or "")[:10])
    output.say(t)
    output.say(f"[bold]{data['branch']}[/] at {data['head'][:10]} (tree {data['tree'][:10]}) in {data['workspace']}")
    if data.get("backup"):
        output.say(f"the previous branch is kept as {data['backup']}")
    if data.get("hint"):
        output.say(f"[yellow]hint:[/] {data['hint']}")
