"""vpatch bisect: find the entry (or upstream commit) that moved a metric, soundly under noise."""
from __future__ import annotations

import dataclasses
import json
import time

import click
from rich.markup import escape

from .. import output
from ..errors import CommandResult, StoppedForConflict, VpatchError
from ._common import run_command
from ..prefixes import Prefix, materialize, prefixes, select
from ..workspace import Workspace
from ._common import pass_ctx, series_of


def _state(ctx):
    from vpatch.validation.bisect_run import BisectState

    return BisectState(ctx.state_dir / "bisect" / "state.json")


def _upstream_positions(ctx, series, good: str, bad: str) -> list[Prefix]:
    from ..git import Git
    from ..sources import resolve_source

    src = resolve_source(series.source, ctx.root)
    if hasattr(src, "walk"):  # pypi: releases are root commits; walk every release from good to bad
        w = src.walk(good, bad)
        g = Git(src.repo())
        shas = [w["from_commit"]] + g.commits(f"{w['from_commit']}..{w['to_commit']}")
        # each walked commit has its release's tree; the series is applied on the release itself (a walk
        # commit is no release the pypi source can check out), so the position is named by its tag
        labels = [good] + list(w["releases"])
        if len(labels) == len(shas):
            return [Prefix(i, label, sha, "") for i, (label, sha) in enumerate(zip(labels, shas, strict=True))]
        good_sha, bad_sha = w["from_commit"], w["to_commit"]
    else:
        good_sha, bad_sha = src.ensure(good), src.ensure(bad)
    g = Git(src.repo())
    shas = [good_sha] + g.commits(f"{good_sha}..{bad_sha}")
    out = []
    for i, sha in enumerate(shas):
        tag = g.run("tag", "--points-at", sha).out.splitlines() or \
            g.run("show", "-s", "--format=%s", sha).out.split()[1:2]  # a walked release: "vllm 0.29.0 (...)"
        out.append(Prefix(i, tag[0] if tag else sha[:12], sha, ""))
    return out


def _upstream_materialize(ctx, series):
    from ..apply import abort_op, start_apply
    from ..context import Context

    ws_path = ctx.state_dir / "bisect-upstream"

    def mat(p: Prefix):
        c2 = Context(series_path=ctx.series_path, workspace_path=ws_path, json=True)
        base = p.label if p.label.startswith("v") else p.commit
        try:
            output.set_mode(json_mode=True, quiet=True)
            start_apply(c2, series, base=base, source=None, upto=None, reset=True)
        except StoppedForConflict as e:
            abort_op(Workspace(ws_path))
            raise VpatchError(f"the series does not apply on {p.label}: {e.message}") from None
        finally:
            output.set_mode(json_mode=ctx.json)
        return ws_path

    return mat


def _cpu_materialize(ctx, ws, vcfg, upstream_mat=None):
    """The cpu target: each position measured in its cpu build (vLLM's CPU wheel + the tree's python).
    Series positions are commits of the workspace; upstream positions are the series applied on each
    upstream commit in the bisect's own workspace, whose HEAD is then built."""
    from vpatch.validation.cpu_target import engine_info, prepare

    from ..build import ensure_cpu_runtime

    cpu = prepare(ctx, ws, vcfg)
    if upstream_mat is None:
        return cpu.cfg, cpu.materialize, cpu.engine
    records: dict[str, dict] = {}

    def mat(p: Prefix):
        up = Workspace(upstream_mat(p))
        head = up.git.run("rev-parse", "HEAD").out
        # the measured path is the cpu build, not a git tree: keep the tree of the series on this commit
        records[p.commit] = ensure_cpu_runtime(ctx, up, head, None)  # with the tree it measured
        return records[p.commit]["venv"]

    def engine(p: Prefix) -> dict:
        rec = records.get(p.commit)
        return {**engine_info(rec), "tree": rec["tree"]} if rec else {}

    return cpu.cfg, mat, engine


def _start_or_resume(ctx, metric, run, good, bad, threshold, budget, max_builds, confidence, gate, upstream, store_path,
                     target=None):
    from vpatch.validation.bisect_run import SeriesOracle, compiled_signature, run_paired, run_sampled
    from vpatch.validation.measure import CommandMeasurer, load_configs, make_measurer
    from vpatch.validation.store import open_store
    from vpatch.validation.validate import Validator

    st = _state(ctx)
    series = series_of(ctx)
    ws = Workspace(ctx.workspace)
    args = {"metric": metric, "run": run, "good": good, "bad": bad, "threshold_pct": threshold, "max_runs": budget,
            "max_builds": max_builds, "confidence": confidence, "gate": gate, "upstream": upstream, "target": target}
    if st.exists():
        state = st.load()
        given = {k: v for k, v in args.items() if v not in (None, False) and k not in ("confidence", "threshold_pct", "gate")}
        clash = {k: v for k, v in given.items() if state["args"].get(k) != v}
        if clash:
            raise VpatchError(f"a bisect is already in progress ({state['args'].get('metric') or state['args'].get('run')}) "
                              f"and differs in {', '.join(clash)}",
                              "`vpatch bisect` with no arguments resumes it; `vpatch bisect reset` starts over")
        if state.get("result"):
            return state
        args = state["args"]
    else:
        if not metric and not run:
            raise VpatchError("say what to bisect: --metric M or --run CMD", "e.g. vpatch bisect --metric tpot")
        state = {"args": args, "started": time.time(), "log": [],
                 "confidence": confidence, "threshold_pct": threshold,
                 "max_runs": budget if budget is not None else 200, "max_builds": max_builds}
    vcfg, mcfg = load_configs(ctx.config_path)
    if args["run"]:
        # each run of --run is its own process, so its own boot: one run per boot, no "runs in one boot"
        m = CommandMeasurer("run", args["run"], runs_per_boot=1)
        state.setdefault("runs_per_batch", 1)
    else:
        m = make_measurer(args["metric"], vcfg, mcfg, series=series)
    if args["upstream"]:
        if not (args["good"] and args["bad"]):
            raise VpatchError("--upstream needs --good REF and --bad REF (upstream refs)")
        positions = _upstream_positions(ctx, series, args["good"], args["bad"])
        mat = _upstream_materialize(ctx, series)

        def signature(p):
            return p.commit  # every upstream commit is a build of its own

        base = args["good"]
    else:
        prefs = prefixes(ws)
        lo = select(prefs, args["good"] or "base")[0].position
        hi = select(prefs, args["bad"])[0].position if args["bad"] else prefs[-1].position
        if hi <= lo:
            raise VpatchError(f"--bad ({hi}) must come after --good ({lo})")
        positions = prefs[lo:hi + 1]

        def mat(p):
            return materialize(ws, p)

        def signature(p):
            return compiled_signature(ws.git, p)

        base = (ws.branch_info() or {}).get("base", series.base)
    engine = None
    if args.get("target") == "cpu":
        from pathlib import Path

        from vpatch.validation.config import CPU_BOOT_COST_RUNS

        state.setdefault("boot_cost_runs", CPU_BOOT_COST_RUNS)  # a boot costs minutes on the CPU engine
        vcfg, mat, engine = _cpu_materialize(ctx, ws, vcfg, mat if args["upstream"] else None)
        cpu_mat = mat
        mat = lambda p: Path(cpu_mat(p))  # noqa: E731
        m = m if args["run"] else make_measurer(args["metric"], vcfg, mcfg, series=series)
    state["positions"] = [dataclasses.asdict(p) for p in positions]
    st.save(state)
    gate_state = args["gate"] if args["gate"] in ("on", "off") else "none"
    env = {}
    if gate_state != "none":
        for e in series.entries:
            env.update({k: (v if gate_state == "on" else "0") for k, v in e.gate.items()})
    store = open_store(store_path or ctx.state_dir / "results.sqlite")
    try:
        with output.progress(f"bisect {m.metric} over {len(positions)} positions") as step:
            if m.kind == "items":
                v = Validator(store, base, series, mat, gate=gate_state, env=env, on_boot=step.detail, engine=engine)
                state = run_paired(state, st, positions, lambda p: v.items(m, p)[0],
                                   on_step=lambda k, r: step.log(f"{positions[k].label}: {escape(r.describe())}"))
            else:
                oracle = SeriesOracle(positions, mat, m, store, base, signature, gate_state, env, engine=engine,
                                      base_of=(lambda p: p.label) if args["upstream"] else None)

                def on_step(probe, samples):
                    p = positions[probe.position]
                    if samples is None:
                        step.log(f"[yellow]skip[/] {p.label}")
                    else:
                        med = sorted(samples)[len(samples) // 2]
                        step.log(f"{probe.purpose:>9} {p.label}: median {med:.4g} ({len(samples)} runs)")
                    step.detail(p.label)

                state = run_sampled(state, st, oracle, on_step=on_step)
    finally:
        store.close()
    return state


def render(d):
    r = d.get("result") or {}
    status = r.get("status", "running")
    if status == "found":
        head = ("[yellow]shift below the threshold at:[/]" if r.get("below_threshold") else "[bold red]culprit:[/]")
        evidence = ""
        if r.get("probability") is not None:
            evidence = f", P(culprit) = {r['probability']:.3f}"
        elif r.get("p_value") is not None:
            evidence = f", McNemar p = {r['p_value']:.2g}"
        output.say(f"{head} {r['culprit_label']} (position {r['culprit']}, {r.get('culprit_commit', '')[:10]}){evidence}")
        if r.get("shift_pct") is not None:
            lo, hi = r["shift_ci_pct"]
            output.say(f"shift {r['shift_pct']:+.2f} % (95 % interval {lo:+.2f}…{hi:+.2f} %)"
                       + (f": below --threshold {r.get('threshold_pct', 0):g} %, real but maybe not the regression you "
                          f"are hunting" if r.get("below_threshold") else ""))
        if r.get("describe"):
            output.say(escape(r["describe"]))
    elif status == "ambiguous":
        output.say(f"[yellow]ambiguous[/] between {' and '.join(r.get('ambiguous_labels', []))}: {escape(r.get('reason', ''))}")
    elif status == "no_shift":
        output.say(f"no shift found: {escape(r.get('reason', ''))}")
    else:
        output.say("bisect in progress")
    for s in r.get("suspects") or []:
        output.say(f"  next suspect: {s['label']} (p={s['p']:.3f})")
    if "runs" in r:
        output.say(f"{r['batches']} boots, {r['runs']} runs, {r['builds']} builds; skipped: {r.get('skipped') or 'none'}")


@click.group("bisect", invoke_without_command=True)
@click.option("--metric", default=None, help="tpot, ttft, gsm8k, kernel:NAME or a [measure.metrics] name.")
@click.option("--run", "run", default=None, help="A command printing a number ({tree} and {python} are filled in).")
@click.option("--good", default=None, help="Good end: an entry id or 'base' (with --upstream: an upstream ref).")
@click.option("--bad", default=None, help="Bad end [default: the top of the series] (with --upstream: an upstream ref).")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Smallest shift in % worth naming.")
@click.option("--budget", type=int, default=None,
              help="At most this many benchmark runs [200]; past it the answer is a range, not a guess.")
@click.option("--max-builds", type=int, default=None, help="At most this many fresh compiles.")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="Stop when one boundary holds this posterior probability.")
@click.option("--gate", type=click.Choice(["default", "on", "off"]), default="default", show_default=True, help="Gate env vars: as the environment has them (default), every entry's gate on, or set to 0.")
@click.option("--upstream", is_flag=True, help="Bisect upstream commits between --good and --bad, the series applied on each.")
@click.option("--store", "store_path", default=None, type=click.Path(), help="The results store [default: .vpatch/results.sqlite beside patches/].")
@click.option("--target", type=click.Choice(["cpu"]), default=None,
              help="cpu: measure on vLLM's CPU engine serving the local tiny model (as validate --target cpu).")
@click.pass_context
def command(cctx, metric, run, good, bad, threshold, budget, max_builds, confidence, gate, upstream, store_path, target):
    """Find the entry (or upstream commit) that moved a metric. State is saved after every
    measurement; run `vpatch bisect` again to resume after a crash or Ctrl-C."""
    if cctx.invoked_subcommand:
        return
    ctx = cctx.obj
    run_command(ctx, lambda c: CommandResult(_start_or_resume(c, metric, run, good, bad, threshold, budget, max_builds,
                                                              confidence, gate, upstream, store_path, target)),
                render=render)


@command.command("status")
@pass_ctx
def status_cmd(ctx):
    """Where the bisect stands."""
    def body(c):
        st = _state(c)
        if not st.exists():
            raise VpatchError("no bisect in progress", "start one with `vpatch bisect --metric M` or `--run CMD`")
        return CommandResult(st.load())
    run_command(ctx, body, render=render)


@command.command("log")
@pass_ctx
def log_cmd(ctx):
    """Every measurement so far: position, samples, median."""
    def body(c):
        st = _state(c)
        if not st.exists():
            raise VpatchError("no bisect in progress")
        return CommandResult({"log": st.load().get("log", [])})

    def render_log(d):
        for e in d["log"]:
            if "describe" in e:
                output.say(f"{e['label']}: {escape(e['describe'])}")
            elif e.get("skipped"):
                output.say(f"{e['label']}: skipped")
            else:
                output.say(f"{e['purpose']:>9} {e['label']}: median {e['median']:.4g} of {json.dumps([round(x, 4) for x in e['samples']])}")

    run_command(ctx, body, render=render_log)


@command.command("reset")
@pass_ctx
def reset_cmd(ctx):
    """Forget the bisect in progress (measurements stay in the results store)."""
    run_command(ctx, lambda c: CommandResult({"reset": _state(c).reset()}),
                render=lambda d: output.say("bisect state removed" if d["reset"] else "no bisect in progress"))
