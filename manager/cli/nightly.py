"""vpatch nightly: re-apply onto the newest upstream, build, validate, compare, bisect, report."""
from __future__ import annotations

import tomllib
from pathlib import Path

import click
from rich.markup import escape

from .. import output
from ..errors import CommandResult, VpatchError
from ._common import run_command
from ._common import pass_ctx


def _nightly_config(path: Path) -> dict:
    if path.exists():
        return tomllib.loads(path.read_text()).get("nightly", {})
    return {}


def _bisect_mode(cfg: dict, path: Path) -> str:
    mode = cfg.get("bisect", "unexplained")
    if mode not in ("unexplained", "always"):
        raise VpatchError(f"{path}: [nightly] bisect = {mode!r}: expected \"unexplained\" or \"always\"")
    return mode


def render(d):
    output.say(f"nightly {d.get('series_base')} → {d.get('upstream')}: [bold]{d['status']}[/] (exit {d['exit_code']})")
    for s in d.get("stages", []):
        mark = "[green]✓[/]" if s["rc"] == 0 else "[red]✗[/]"
        output.say(f"  {mark} {s['name']:<9} {s['seconds']:7.1f} s" + (f"  {escape(s['error'] or '')}" if s["rc"] else ""))
    if d.get("regression_basis"):
        output.say(f"  regression: {escape(d['regression_basis'])}")
    for n in d.get("named_by_validate") or []:
        output.say(f"[bold red]culprit (validate):[/] {escape(str(n['entry']))}  {escape(str(n.get('describe') or ''))}")
    for kind, r in (d.get("bisect") or {}).items():
        if isinstance(r, dict) and r.get("status") == "found":
            output.say(f"[bold red]culprit ({kind}):[/] {r.get('culprit_label')}")
    for k, p in (d.get("reports") or {}).items():
        output.say(f"  {k}: {p}")


@click.command("nightly")
@click.option("--upstream", default=None, help="Upstream ref to move to [default: the newest release / the base].")
@click.option("--shard", metavar="I/N", default=None, help="Validate only this shard of the prefixes (CI matrix).")
@click.option("--metric", "metrics", default=None, help="Comma-separated metrics [vpatch.toml [nightly] metrics, or tpot].")
@click.option("--threshold", type=float, default=None, help="Regression threshold in % [nightly.threshold_pct or 1.0].")
@click.option("--build", "build_target", default=None, help="Build target [nightly.build, or no build].")
@click.option("--checks/--no-checks", default=None,
              help="Run the entries' effect checks on the new upstream (an entry that applies but has no effect is "
                   "drift) [nightly.checks, or on].")
@click.option("--report-dir", type=click.Path(path_type=Path), default=None, help="Where reports go [.vpatch/nightly/report].")
@pass_ctx
def command(ctx, upstream, shard, metrics, threshold, build_target, checks, report_dir):
    """Nightly pipeline: check, rebase, build, validate, compare, bisect, report. Exit 0 clean, 10 drift needs a human, 20 regression found (culprit named),
    30 infrastructure failure."""
    from vpatch.ci.nightly import run

    cfg = _nightly_config(ctx.config_path)

    def body(c):
        with output.progress("nightly") as step:
            code, data = run(c.root, c.series_path.resolve(), c.state_dir, upstream=upstream, shard=shard,
                             metrics=(metrics.split(",") if metrics else cfg.get("metrics", ["tpot"])),
                             threshold_pct=threshold if threshold is not None else cfg.get("threshold_pct", 1.0),
                             report_dir=report_dir or c.state_dir / "nightly" / "report",
                             build_target=build_target or cfg.get("build"), workspace=c.workspace_path,
                             progress=step.detail, bisect_budget=int(cfg.get("bisect_budget", 120)),
                             checks=bool(cfg.get("checks", True)) if checks is None else checks,
                             bisect=_bisect_mode(cfg, c.config_path))
        return CommandResult(data, exit_code=code)

    run_command(ctx, body, render=render)
