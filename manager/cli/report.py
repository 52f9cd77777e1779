"""vpatch report: the per-entry table, plots and test results, as HTML, Markdown and JUnit XML."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import output
from ..atomic import write_text
from ..errors import CommandResult, VpatchError
from ._common import run_command
from ..series import load_series
from ._common import pass_ctx

# exit codes: what CI branches on (`--no-fail` makes them all 0)
EXIT_OK, EXIT_REGRESSION, EXIT_NEEDS_HUMAN = 0, 1, 2


def _write(path: str, text: str) -> str:
    if path == "-":
        if not output.json_mode():
            click.echo(text, nl=False)
        return "-"
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text(p, text)
    return str(p)


def _body(ctx, store_path, drift_path, base, html, markdown, junit, title, no_fail):
    from vpatch.validation import report as rp
    from vpatch.validation.store import open_store

    series = load_series(ctx.series_path)
    drift = None
    if drift_path:
        try:
            drift = json.loads(Path(drift_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise VpatchError(f"{drift_path}: cannot read the drift result: {e}",
                              "pass the JSON written by `vpatch check --json`, `vpatch drift --json` or `vpatch nightly --json`") from e
    path = Path(store_path) if store_path else ctx.state_dir / "results.sqlite"
    if not path.exists() and drift is not None:
        # nothing measured yet (e.g. the nightly stopped at drift): report the drift alone
        report = rp.build_report(series, None, drift=drift, base=base).as_dict()
    else:
        store = open_store(path, create=False)
        try:
            report = rp.build_report(series, store, drift=drift, base=base).as_dict()
        finally:
            store.close()
    written = {}
    if html:
        from vpatch.validation import report_html
        written["html"] = _write(html, report_html.render(report, title=title))
    if markdown:
        from vpatch.validation import report_md
        written["markdown"] = _write(markdown, report_md.render(report, title=title))
    if junit:
        from vpatch.validation import report_junit
        written["junit"] = _write(junit, report_junit.render(report))
    headline = report["summary"]["headline"]
    code = {"needs a human": EXIT_NEEDS_HUMAN, "regression": EXIT_REGRESSION}.get(headline, EXIT_OK)
    return CommandResult({**report, "written": written, "exit": code}, 0 if no_fail else code)


def render(d: dict) -> None:
    from vpatch.validation.report_text import upstream_text

    if "-" in d["written"].values():
        return  # the Markdown went to stdout; keep it clean
    s = d["summary"]
    color = {"ok": "green", "regression": "red", "needs a human": "yellow"}.get(s["headline"], "white")
    output.say(f"[bold]{escape(d['series'])}[/] on {escape(str(d['base']))}: [{color}]{s['headline']}[/]  "
               f"(upstream {escape(upstream_text(d.get('upstream')))})")
    t = Table(box=None, header_style="bold")
    for col in ("#", "entry", "drift", "TPOT", "claims", "result"):
        t.add_column(col)
    oc = {"passed": "green", "failed": "red", "needs-human": "yellow", "unknown": "white", "not-checked": "white",
          "not-measured": "white", "upstream": "cyan"}
    for e in d["entries"]:
        tp = next((m for m in e["metrics"] if m["metric"] == "tpot"), None)
        tps = tp["describe"].split(" ", 1)[-1] if tp else "–"
        claims = ", ".join(f"{c['metric']} {c['status']}" for c in e["claims"]) or "–"
        t.add_row(str(e["index"]), e["id"], (e.get("drift") or {}).get("status", "–"), escape(tps), escape(claims),
                  f"[{oc.get(e['outcome'], 'white')}]{e['outcome']}[/]")
    output.say(t)
    for reg in s.get("history_regressions", []):
        output.say(f"[red]nightly change point:[/] {escape(reg)}")
    for kind, p in d["written"].items():
        output.say(f"{kind}: {p}")
    if not d["written"]:
        output.say("[dim]write files with --html FILE, --markdown FILE, --junit FILE[/]")


@click.command("report")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), default=None,
              help="Results store [default: .vpatch/results.sqlite beside patches/].")
@click.option("--drift", "drift_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSON from `vpatch check --json`, `drift --json` or `nightly --json`: drift per entry, upstream range.")
@click.option("--base", default=None, help="Report results measured on this base [default: the newest in the store].")
@click.option("--html", type=click.Path(dir_okay=False), default=None, help="Write the HTML page (offline, plots inline).")
@click.option("--markdown", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write Markdown sized for $GITHUB_STEP_SUMMARY ('-': stdout).")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Write JUnit XML (a case per entry and check).")
@click.option("--title", default=None, help="Heading of the report [default: 'vpatch report'].")
@click.option("--no-fail", is_flag=True, help="Exit 0 even when the report shows a regression or drift needing a human.")
@pass_ctx
def command(ctx, store_path, drift_path, base, html, markdown, junit, title, no_fail):
    """Report per entry (before → after, change, CI, p, n, verdict, claim, drift), accuracy per prefix and the
    nightly history with change points. Exit 1: a regression (claim contradicted, check failed, accuracy or
    nightly worse); 2: drift needs a human; 0 otherwise."""
    run_command(ctx, _body, store_path, drift_path, base, html, markdown, junit, title, no_fail, render=render)
