"""vpatch validate: measure each prefix where results are missing, compare, check the claims."""
from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from .. import output
from ..errors import CommandResult, VpatchError
from ._common import run_command
from ..prefixes import materialize, prefixes, select
from ..workspace import Workspace
from ._common import pass_ctx, series_of


def _body(ctx, metrics, entries, against, budget, min_boots, gate, store_path, shard=None, target=None):
    from vpatch.validation.measure import load_configs, make_measurer
    from vpatch.validation.store import open_store
    from vpatch.validation.validate import Validator

    series = series_of(ctx)
    ws = Workspace(ctx.workspace)
    vcfg, mcfg = load_configs(ctx.config_path)
    prefs = prefixes(ws)
    chosen = select(prefs, entries)
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise VpatchError(f"--shard {shard}: expected I/N, two whole numbers like 2/4") from None
        if not 1 <= i <= n:
            raise VpatchError(f"--shard {shard}: I must be between 1 and N")
        chosen = [p for p in chosen if p.position % n == i - 1]
    ref = select(prefs, against)[0] if against else None
    gate_env = {}
    if gate in ("on", "off"):
        for e in series.entries:
            for k, v in e.gate.items():
                gate_env[k] = v if gate == "on" else "0"
    store = open_store(store_path or ctx.state_dir / "results.sqlite")
    rows = []
    base = (ws.branch_info() or {}).get("base", series.base)
    names = [n.strip() for n in metrics.split(",") if n.strip()]
    extra: dict = {}
    with output.progress("validating", total=None) as step:
        def mat(p):
            return materialize(ws, p)

        cpu = None
        if target == "cpu":
            from vpatch.validation.cpu_target import prepare

            step.detail("cpu target: tiny model and engine")
            cpu = prepare(ctx, ws, vcfg, step=step)
            vcfg, mat = cpu.cfg, cpu.materialize
            extra = {"target": "cpu", "model": vcfg.model, "not_measurable": cpu.not_measurable}
        v = Validator(store, base, series, mat, gate=gate if gate in ("on", "off") else "none",
                      env=gate_env, min_boots=min_boots or vcfg.boots_min, max_boots=budget or vcfg.boots_max,
                      on_boot=step.detail, not_measurable=cpu.not_measurable if cpu else {},
                      engine=cpu.engine if cpu else None)
        ms = [make_measurer(n, vcfg, mcfg, series=series) for n in names]
        if cpu is not None:  # one boot serves TPOT, TTFT, outputs and gsm8k
            for m in ms:
                if m.metric in ("tpot", "ttft"):
                    m.share = cpu.share
                elif m.metric in ("outputs", "gsm8k") and any(x in names for x in ("tpot", "ttft")):
                    cpu.share.passengers.append(m)
        for m in ms:
            rows += [r.as_dict() for r in v.run(m, chosen, ref, prefs)]
        if cpu is not None:
            extra["engines"] = {t: rt.get("fingerprint") for t, rt in cpu.runtimes.items()}
    store.close()
    return CommandResult({"rows": rows, "measured_boots": v.measured, "store": str(store.path),
                          "prefixes": [p.__dict__ for p in chosen], **extra})


def render(d):
    t = Table(box=None, header_style="bold")
    for c in ("#", "entry", "vs", "result", "new boots", "claim"):
        t.add_column(c)
    for r in d["rows"]:
        claim = "; ".join(f"{c['status']}" for c in r["claims"]) or "-"
        color = {"better": "green", "worse": "red", "same": "cyan", "identical": "cyan", "differs": "red",
                 "not measurable": "dim"}.get(r["verdict"], "yellow")
        t.add_row(str(r["position"]), r["entry"], r["reference"], f"[{color}]{escape(r['describe'])}[/]",
                  str(r["new_boots"]), claim)
    output.say(t)
    output.say(f"measured {d['measured_boots']} new boots; results in {d['store']}")
    keys = ("vllm", "platform", "torch", "compiled_loaded")
    for fp in sorted({json.dumps({k: f.get(k) for k in keys}, sort_keys=True) for f in (d.get("engines") or {}).values() if f}):
        f = json.loads(fp)
        output.say(f"engine: vLLM {f.get('vllm')} ({f.get('platform')}), torch {f.get('torch')}, "
                   f"{', '.join(f.get('compiled_loaded') or [])}; model {d.get('model')}")


@click.command("validate")
@click.option("--metric", "metrics", default="tpot", show_default=True,
              help="Comma-separated: tpot, ttft, gsm8k, outputs, kernel:NAME, or a [measure.metrics] name.")
@click.option("--per-entry", is_flag=True, help="Compare every prefix with the one before (the default).")
@click.option("--entries", metavar="A..B", default=None, help="Only these prefixes (entry ids or positions).")
@click.option("--against", metavar="base|ID", default=None, help="Compare each prefix with this one instead of its predecessor.")
@click.option("--budget", type=int, default=None, help="At most this many boots per side [vpatch.toml boots_max].")
@click.option("--min-boots", type=click.IntRange(min=2), default=None, help="At least this many boots per side [boots_min].")
@click.option("--gate", type=click.Choice(["default", "on", "off"]), default="default",
              help="Measure with gated entries switched on or off.")
@click.option("--store", "store_path", type=click.Path(), default=None, help="Results store [default: .vpatch/results.sqlite].")
@click.option("--shard", metavar="I/N", default=None, help="Only prefixes whose position is I-1 modulo N (CI matrices).")
@click.option("--target", type=click.Choice(["cpu"]), default=None,
              help="cpu: measure on vLLM's CPU engine (`vpatch build --target cpu`) serving a local tiny model.")
@pass_ctx
def command(ctx, metrics, per_entry, entries, against, budget, min_boots, gate, store_path, shard, target):
    """Measure each prefix where the results store has nothing yet, then print the per-entry table:
    "TPOT 14.63 → 14.21 ms (−2.9 %, 95 % CI …, p …, n 12+12): better" and whether each claim holds.
    Results are keyed by tree hash and run configuration: a second run measures nothing new."""
    run_command(ctx, _body, metrics, entries, against, budget, min_boots, gate, store_path, shard, target,
                render=render)
