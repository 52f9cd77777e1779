"""vpatch verify: run each applied entry's checks against the workspace; pass / fail / skipped."""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .. import output
from ..errors import CommandResult
from ._common import run_command
from ..verify import DEFAULT_TIMEOUT_S, verify
from ._common import pass_ctx, series_of

COLORS = {"pass": "green", "fail": "red", "skipped": "cyan"}


def render(d: dict) -> None:
    rt = d.get("runtime") or {}
    if rt:
        kind = "(cpu build)" if rt.get("kind") == "cpu" else "python-only"
        what = f"vLLM {rt['vllm_version']} {kind}" if rt.get("vllm_version") else "given python"
        output.say(f"[bold]workspace[/] {d['workspace']} (base {d['base']}); checks ran in {what}: {rt['python']}")
    if d.get("dirty"):
        output.say("[yellow]note:[/] the workspace has uncommitted changes; the checks saw the working tree")
    t = Table(box=None, header_style="bold")
    for col in ("entry", "result", "detail"):
        t.add_column(col)
    for e in d["entries"]:
        t.add_row(e["id"], f"[{COLORS.get(e['result'], 'white')}]{e['result']}[/]", e["reason"])
    output.say(t)
    for e in d["entries"]:
        if e["result"] != "fail":
            continue
        for c in e["checks"]:
            if c["rc"] == 0 and not c["timed_out"]:
                continue
            output.say(f"[bold red]{e['id']}[/]: `{c['command']}` "
                       + ("timed out" if c["timed_out"] else f"exited {c['rc']}") + "; last lines:")
            for line in c["output_tail"][-12:]:
                output.say(f"    {line}", markup=False)
            if c.get("log"):
                output.say(f"    full output: {c['log']}", markup=False)
    if d.get("not_in_series"):
        output.say(f"[yellow]note:[/] applied in the workspace but not in the series: {', '.join(d['not_in_series'])}")
    n = d["counts"]
    output.say(f"{n['pass']} passed, {n['fail']} failed, {n['skipped']} skipped")


@click.command("verify")
@click.argument("ids", nargs=-1, metavar="[ID ...]")
@click.option("--python", "python", metavar="PATH",
              help="Run the checks with this python (e.g. a ROCm build's venv) instead of the workspace's "
                   "python-only runtime, which is then neither made nor used.")
@click.option("--venv", "venv", type=click.Path(path_type=Path), metavar="DIR",
              help="Where the python-only runtime lives [default: .vpatch/runtime/<workspace>-<hash>].")
@click.option("--timeout", "timeout_s", type=float, default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds one check may run before it is stopped and counted as failed.")
@pass_ctx
def command(ctx, ids, python, venv, timeout_s):
    """Prove that each entry applied in the workspace takes effect: run its `checks`.

    The checks run in a python-only install of the workspace's vLLM (CPU torch 2.13.0,
    VLLM_TARGET_DEVICE=empty), made the first time (about two minutes, with progress) and reused.
    An entry passes when all its checks exit 0; it is skipped when it has no checks or is not
    applied here (e.g. merged upstream at or before the workspace's base). Exit status 1 when an
    entry failed."""

    def body(ctx):
        data = verify(ctx, series_of(ctx), tuple(ids), python=python, venv=venv, timeout_s=timeout_s)
        return CommandResult(data, exit_code=1 if data["counts"]["fail"] else 0)

    run_command(ctx, body, render=render)
