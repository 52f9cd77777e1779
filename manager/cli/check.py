"""vpatch check --onto REF: what happens to each entry on REF, index-only (no checkout, no workspace)."""
from __future__ import annotations


import click
from rich.table import Table

from .. import output
from ..errors import CommandResult, VpatchError
from ._common import run_command
from ..series import load_series
from ..sources import resolve_source
from ..upstream import check_series, effect_checks, exit_status, summarize
from ._common import pass_ctx

COLORS = {"clean": "green", "3-way": "yellow", "already-upstream": "cyan", "conflict": "red", "obsolete": "magenta",
          "applies-but-no-effect": "red", "error": "red"}


def render(d: dict) -> None:
    output.say(f"[bold]{d['base']}[/] -> [bold]{d['onto']}[/] ({d['onto_commit'][:12]}) from {d['source']}")
    t = Table(box=None, header_style="bold")
    for col in ("entry", "status", "detail"):
        t.add_column(col, overflow="fold")
    for e in d["entries"]:
        status = e["status"] + (f" ({e['how']})" if e.get("how") else "")
        detail = e.get("detail", "")
        if e.get("conflicts"):
            detail += "; " + "; ".join(f"{c['file']} lines " + ", ".join(f"{a}-{b}" for a, b in c.get("regions", []))
                                       for c in e["conflicts"])
        bad = [h for h in e.get("hunks", []) if h["state"] != "applies"]
        if bad:
            detail += "; hunks: " + ", ".join(f"{h['file'].rsplit('/', 1)[-1]}:{h['old_start']} {h['state']}" for h in bad)
        if e.get("checks") is not None:
            detail += "; checks: " + ", ".join(f"{c.get('check', '?')} {c.get('result')}" for c in e["checks"])
        if e.get("pycheck"):
            from ..pycheck import describe
            detail += "; " + describe(e["pycheck"])
        if e.get("effect"):
            detail += f"; effect {e['effect']}" + (f" ({e['effect_detail']})" if e.get("effect_detail") else "")
        t.add_row(e["id"], f"[{COLORS.get(e['status'], 'white')}]{status}[/]", detail)
    output.say(t)
    counts = ", ".join(f"{v} {k}" for k, v in d["summary"].items())
    verdict = {0: "[green]nothing needs a human[/]", 1: "[red]a human is needed[/]",
               2: "[red]some entries could not be checked[/]"}[d["exit_status"]]
    output.say(f"{counts} — {verdict}")
    if d.get("effect_checks"):
        output.say(f"effect checks: {d['effect_checks']}")


@click.command("check")
@click.option("--onto", required=True, metavar="REF", help="The upstream ref to check the series on (tag, branch, sha).")
@click.option("--source", help="Where REF comes from [default: the series' source].")
@click.option("--base", metavar="REF", help="The ref the series was made on [default: the series' base].")
@click.option("--checks/--no-checks", default=False, show_default=True,
              help="Also run the entries' effect checks on the moved series, in the workspace's runtime (its "
                   "cpu build where `vpatch build --target cpu` made one, else a python-only install made once, "
                   "~2 min the first time), with the moved tree first on PYTHONPATH; entries found upstream "
                   "are checked too.")
@click.option("--python", "python", metavar="PATH",
              help="With --checks: run the checks with this python (an environment with vLLM's dependencies) "
                   "instead of the workspace's runtime; the moved tree goes first on its PYTHONPATH.")
@pass_ctx
def command(ctx, onto, source, base, checks, python):
    """Classify every entry on REF without touching any checkout: clean | 3-way | conflict (files, hunks) |
    already-upstream (how: patch-id, reverse-apply, 3-way-noop, content, declared) | obsolete, applied
    cumulatively in series order on REF's tree; with --checks, entries that apply but whose effect check
    fails are applies-but-no-effect.

    Exit status, for CI: 0 nothing needs a human (all clean, 3-way or already upstream); 1 a human is needed
    (a conflict, an obsolete entry, or an entry without effect); 2 the answer is incomplete (an entry could
    not be checked, or REF/the source/the series could not be read); 3 another vpatch holds the lock;
    70 a bug in vpatch."""

    def body(ctx):
        try:
            series = load_series(ctx.series_path)  # entries with missing files are reported, not refused
            src = resolve_source(source or series.source, ctx.root)
            with output.progress(f"checking {len(series.entries)} entries on {onto}") as step:
                then = (lambda d: effect_checks(series, d, python=python, ctx=ctx)) if checks else None
                data = check_series(series, src, onto, base=base, progress=step.detail, then=then)
        except VpatchError as e:
            e.exit_code = max(e.exit_code, 2)
            raise
        data["summary"] = summarize(data["entries"])
        data["exit_status"] = exit_status(data["entries"])
        return CommandResult(data, exit_code=data["exit_status"])

    run_command(ctx, body, render=render)
