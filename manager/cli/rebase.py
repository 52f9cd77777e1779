"""vpatch rebase --onto REF: move the series onto REF; found-upstream entries are dropped and recorded."""
from __future__ import annotations

from pathlib import Path

import click

from .. import output
from ..apply import abort_op
from ..errors import CommandResult, VpatchError
from ._common import run_command
from ..workspace import Workspace
from ._common import pass_ctx, render_done, series_of


def exit_code(d: dict) -> int:
    """1 when a finished rebase left skipped entries behind (a human must port or drop them), else 0."""
    return 1 if (d.get("rebase") or {}).get("skipped") else 0


def result(d: dict) -> CommandResult:
    return CommandResult(d, exit_code=exit_code(d))


def render(d: dict) -> None:
    if "aborted" in d:
        output.say(f"aborted the {d['aborted']}: back on {d.get('branch') or '(detached)'} at {(d.get('head') or '')[:10]}")
        return
    render_done(d)
    rb = d.get("rebase") or {}
    for r in rb.get("entries", []):
        extra = "; ".join(x for x in (r.get("how"), r.get("change")) if x)
        output.say(f"  {r['id']}: {r['result']}" + (f" ({extra})" if extra else ""))
    if rb.get("recorded_merged"):
        output.say(f"recorded in series.toml as merged in {rb['onto']}: {', '.join(rb['recorded_merged'])}")
    if rb.get("not_recorded"):
        output.say(f"[yellow]not recorded as merged[/] (--onto {rb['onto']} is not a release; `merged` takes a version): "
                   f"{', '.join(rb['not_recorded'])} — found upstream in {rb['onto']}; set `upstream = {{ merged = "
                   "\"vX.Y.Z\" }` with the first release that holds each (series.toml says so beside them)")
    for eid, found in (rb.get("pycheck") or {}).items():
        from ..pycheck import describe
        output.say(f"[red]![/] {eid}: {describe(found)}")
    if rb.get("skipped"):
        output.say(f"[red]skipped, still to do[/] ({len(rb['skipped'])}; their patches are for {rb['old_base']} "
                   f"and do not apply on {rb['onto']}; series.toml says so beside them):")
        for x in rb["skipped"]:
            output.say(f"  {x['id']}: {x['todo']}")
    for f in rb.get("patches_written", []):
        output.say(f"wrote {f}")
    if rb.get("resolutions_recorded"):
        output.say(f"recorded {len(rb['resolutions_recorded'])} conflict resolution(s) in patches/.resolutions/")
    if rb.get("report"):
        output.say(f"report (range-diff and per-entry summary): {rb['report']}")


@click.command("rebase")
@click.option("--onto", metavar="REF", help="The upstream ref to move the series onto.")
@click.option("--source", help="Where REF comes from [default: the series' source].")
@click.option("--report", type=click.Path(path_type=Path), help="Where to write the report [default: .vpatch/reports/].")
@click.option("--reset", is_flag=True, help="Re-apply from REF even if the workspace already has a branch for it.")
@click.option("--force", is_flag=True, help="Move the series even if the workspace holds edits not refreshed into it.")
@click.option("--continue", "cont", is_flag=True, help="Go on after resolving a conflict (like `vpatch continue`).")
@click.option("--skip", is_flag=True, help="Leave the entry in conflict out (like `vpatch skip`).")
@click.option("--abort", is_flag=True, help="Undo the rebase (like `vpatch abort`).")
@pass_ctx
def command(ctx, onto, source, report, reset, force, cont, skip, abort):
    """Move the series onto REF in the workspace (branch vpatch/REF). Entries upstream already holds are
    dropped and recorded as merged in series.toml; at a conflict it stops (continue / skip / abort, here or
    as `vpatch continue|skip|abort`); conflict resolutions are recorded in patches/.resolutions/ and replayed
    by later rebases anywhere; on completion the patch files are refreshed, [series] base is set to REF, and
    a range-diff report is written. Exit status: 0 done; 1 done, but entries were skipped (listed, with what to
    do with each); 2 stopped at a conflict."""
    from ..rebase import continue_rebase, skip_rebase, start_rebase

    def body(ctx):
        ws = Workspace(ctx.workspace)
        if sum(map(bool, (cont, skip, abort))) > 1 or ((cont or skip or abort) and onto):
            raise VpatchError("pass either --onto REF or one of --continue / --skip / --abort")
        if cont:
            return result(continue_rebase(ws))
        if skip:
            return result(skip_rebase(ws))
        if abort:
            return CommandResult(abort_op(ws))
        if not onto:
            raise VpatchError("--onto REF is required", "e.g. `vpatch rebase --onto v0.29.0`")
        return result(start_rebase(ctx, series_of(ctx), onto, source=source, reset=reset, report=report,
                                   force=force))

    run_command(ctx, body, render=render)
