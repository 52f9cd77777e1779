"""Shared pieces of the verb modules: the one error handler, loading the series, small renderers."""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import click

from .. import output
from ..context import Context
from ..errors import CommandResult, Terminated, VpatchError
from ..lint import load_checked
from ..series import Series

pass_ctx = click.make_pass_decorator(Context)


def run_command(ctx: Context, fn, *args, render=None, **kwargs) -> None:
    """Run a command body; print its result (JSON or `render`), turn errors into one line + a log."""
    started = time.monotonic()
    try:
        result: CommandResult = fn(ctx, *args, **kwargs)
        data = result.data if isinstance(result.data, dict) else {"result": result.data}
        data.setdefault("elapsed_s", round(time.monotonic() - started, 3))
    except VpatchError as e:
        _fail(ctx, e.message, e.hint, e.exit_code, e.data, exc=e)
    except Terminated:
        _fail(ctx, "terminated (SIGTERM)", "servers and benchmarks vpatch started were stopped; state is saved after "
              "every step: `vpatch status` shows where things stand", 143, {})
    except KeyboardInterrupt:
        _fail(ctx, "interrupted", "state is saved after every step: `vpatch status` shows where things stand", 130, {})
    except Exception as e:  # a bug: still one line, and the traceback in the log
        _fail(ctx, f"internal error: {type(e).__name__}: {e}", "this is a bug in vpatch; the log has the traceback", 70, {}, exc=e)
    else:
        try:
            if output.json_mode():
                output.emit_json(data)
            elif render is not None:
                render(data)
        except VpatchError as e:
            _fail(ctx, e.message, e.hint, e.exit_code, e.data, exc=e)
        except Exception as e:  # a renderer meeting data it does not expect is a bug: same one line
            _fail(ctx, f"internal error: {type(e).__name__}: {e}", "this is a bug in vpatch; the log has the traceback", 70, {}, exc=e)
        sys.exit(result.exit_code)


def _fail(ctx: Context, message: str, hint: str | None, code: int, data: dict, exc: BaseException | None = None) -> None:
    log_path = None
    if exc is not None:
        try:
            log_path = ctx.log_dir() / "vpatch.log"
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(sys.argv)}\n")
                f.write("".join(traceback.format_exception(exc)))
        except OSError:
            log_path = None
    if output.json_mode():
        output.emit_json({"error": message, "hint": hint, "log": str(log_path) if log_path else None, **data})
    else:
        from rich.markup import escape

        c = output.stderr
        c.print(f"[bold red]error:[/] {escape(message)}")
        if hint:
            c.print(f"[yellow]hint:[/] {escape(hint)}")
        if log_path and code == 70:
            c.print(f"log: {log_path}")
    sys.exit(code)


def series_of(ctx: Context) -> Series:
    return load_checked(ctx.series_path)


def loader(path: str) -> Series:
    return load_checked(Path(path))


def render_done(data: dict) -> None:
    from rich.table import Table

    if data.get("merged"):
        for eid, why in data["merged"].items():
            output.say(f"[cyan]–[/] {eid}: skipped, {why}")
    t = Table(show_header=True, header_style="bold", box=None)
    t.add_column("entry")
    t.add_column("result")
    t.add_column("commit")
    for d in data.get("done", []):
        t.add_row(d["id"], d["result"] + (f" ({d['detail']})" if d.get("detail") and d["result"] not in ("clean", "kept") else ""),
                  (d.get("commit") or "")[:10])
    output.say(t)
    output.say(f"[bold]{data['branch']}[/] at {data['head'][:10]} (tree {data['tree'][:10]}) in {data['workspace']}")
    if data.get("backup"):
        output.say(f"the previous branch is kept as {data['backup']}")
    if data.get("hint"):
        output.say(f"[yellow]hint:[/] {data['hint']}")


def resume(ctx: Context, step: str) -> None:
    """`vpatch continue` (``step="continue"``) and `vpatch skip` (``"skip"``): go on with the stopped operation,
    an apply or a rebase (which replays recorded resolutions and ends with the rebase's summary)."""
    def body(c: Context) -> CommandResult:
        from ..workspace import Workspace

        ws = Workspace(c.workspace)
        op = ws.operation() if ws.exists() else None
        if op and op.get("op") == "rebase":
            from ..rebase import continue_rebase, skip_rebase
            from .rebase import result

            return result((continue_rebase if step == "continue" else skip_rebase)(ws))
        from ..apply import continue_op, skip_op

        return CommandResult((continue_op if step == "continue" else skip_op)(ws, loader))

    def render(d: dict) -> None:
        if "rebase" in d:
            from .rebase import render as render_rebase

            return render_rebase(d)
        return render_done(d)

    run_command(ctx, body, render=render)
