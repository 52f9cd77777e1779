"""vpatch drift --from A --to B: which upstream commit broke which entry, and what is coming for it."""
from __future__ import annotations

import click
from rich.table import Table

from .. import output
from ..drift import drift
from ..errors import CommandResult, VpatchError
from ._common import run_command
from ..series import load_series
from ..sources import resolve_source
from ._common import pass_ctx


def render(d: dict) -> None:
    if d.get("releases") is not None:
        output.say(f"releases walked (pypi): {', '.join(d['releases'])}")
    if d.get("note"):
        output.say(f"[yellow]note:[/] {d['note']}")
    output.say(f"[bold]{d['from']}[/]..[bold]{d['to']}[/]: {d['commits']} upstream commits, "
               f"{d['touch_points']} touch the series' files; {d['checks_run']} index-only checks in {d['scan_s']} s")
    t = Table(box=None, header_style="bold")
    for col in ("entry", "at --to", "first not clean", "first conflict", "commits on files", "on hunks"):
        t.add_column(col, overflow="fold")

    def at(x):
        if not x:
            return "-"
        return f"{x['commit'][:10]} #{x['index']} {x['status']}" + (f" ({x['how']})" if x.get("how") else "") + \
            f" {x['subject'][:50]}"

    for e in d["entries"]:
        t.add_row(e["id"], e["at_to"] + (f" ({e['how_at_to']})" if e.get("how_at_to") else ""), at(e["breaks_at"]),
                  at(e["conflicts_at"]), str(len(e["touched_files"])),
                  ", ".join(x["commit"][:10] for x in e["touched_hunks"][:6]) + (" …" if len(e["touched_hunks"]) > 6 else ""))
    output.say(t)
    if d.get("declared_merged"):
        output.say(f"recorded merged before {d['from']}: {', '.join(d['declared_merged'])}")


@click.command("drift")
@click.option("--from", "frm", metavar="REF", help="Start of the upstream range [default: the series' base].")
@click.option("--to", "to", required=True, metavar="REF", help="End of the upstream range.")
@click.option("--source", help="Where the refs come from [default: the series' source].")
@click.option("--exhaustive", is_flag=True,
              help="Check every commit that touches the series' files instead of binary search, and list every "
                   "status transition (finds an entry that breaks and is fixed again).")
@pass_ctx
def command(ctx, frm, to, source, exhaustive):
    """Walk the upstream commits FROM..TO (first parents): per entry, the first commit where it stops applying
    cleanly and the first where it conflicts (binary search with index-only checks), and the commits that
    touched its files and its hunks. Exit status 0 (informational), 2 when the range cannot be read."""

    def body(ctx):
        try:
            series = load_series(ctx.series_path)
            src = resolve_source(source or series.source, ctx.root)
            with output.progress(f"scanning {frm or series.base}..{to}") as step:
                data = drift(series, src, frm or series.base, to, exhaustive=exhaustive, progress=step.detail)
        except VpatchError as e:
            e.exit_code = max(e.exit_code, 2)
            raise
        return CommandResult(data)

    run_command(ctx, body, render=render)
