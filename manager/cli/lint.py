"""vpatch lint: check the series file and every entry's files."""
from __future__ import annotations

import click

from .. import output
from ..errors import CommandResult, SeriesError
from ..lint import lint_series
from ._common import run_command
from ..series import load_series
from ._common import pass_ctx


@click.command("lint")
@pass_ctx
def command(ctx):
    """Validate the series: schema, unique ids, files present, no path leaving the tree, no links."""

    def body(ctx):
        try:
            series = load_series(ctx.series_path)
            problems = lint_series(series)
        except SeriesError as e:
            problems = e.problems
            series = None
        errors = [p for p in problems if p.severity == "error"]
        return CommandResult({"series": str(ctx.series_path), "entries": len(series.entries) if series else None,
                              "problems": [p.as_dict() for p in problems], "ok": not errors},
                             exit_code=1 if errors else 0)

    def render(d):
        from rich.markup import escape

        for p in d["problems"]:
            loc = p["file"] + (f":{p['line']}" if p["line"] else "") + (f" [entry {p['entry']}]" if p["entry"] else "")
            color = "red" if p["severity"] == "error" else "yellow"
            output.say(f"{escape(loc)}: [{color}]{p['severity']}[/]: {escape(p['message'])}")
        if d["ok"]:
            output.say(f"[green]ok[/]: {d['series']} ({d['entries']} entries)")

    run_command(ctx, body, render=render)
