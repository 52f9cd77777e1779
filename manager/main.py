"""The `vpatch` command line: global options, one module per verb under ``commands/``, one error handler."""
from __future__ import annotations

import importlib
import logging
import sys
import time
import traceback
from pathlib import Path

import click
from rich.markup import escape

from . import output
from .context import Context
from .errors import CommandResult, VpatchError

# verb -> module under vpatch.manager.commands (each defines `command`, a click.Command)
COMMANDS: dict[str, str] = {
    "init": "init",
    "lint": "lint",
    "apply": "apply",
    "continue": "continue_",
    "skip": "skip",
    "abort": "abort",
    "status": "status",
    "refresh": "refresh",
    "new": "new",
    "import": "import_",
    "export": "export",
    "verify": "verify",
    "check": "check",
    "rebase": "rebase",
    "drift": "drift",
    "build": "build",
    "validate": "validate",
    "results": "results",
    "bisect": "bisect",
    "nightly": "nightly",
    "report": "report",
}

log = logging.getLogger("vpatch")


class LazyGroup(click.Group):
    """Loads a verb's module only when it runs, so `vpatch status` never imports scipy or torch."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, mod in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        mod = COMMANDS.get(name)
        if mod is None or not _module_exists(mod):
            return None
        return importlib.import_module(f"vpatch.manager.commands.{mod}").command


def _module_exists(mod: str) -> bool:
    return (Path(__file__).parent / "commands" / f"{mod}.py").exists()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--series", "series", type=click.Path(path_type=Path), default=Path("patches/series.toml"),
              show_default=True, help="The series file.")
@click.option("--workspace", "workspace", type=click.Path(path_type=Path), default=None,
              help="The vLLM checkout to work on [default: .vpatch/vllm beside patches/].")
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON document on stdout instead of tables.")
@click.option("-q", "--quiet", is_flag=True, help="Print less.")
@click.pass_context
def cli(ctx: click.Context, series: Path, workspace: Path | None, json_mode: bool, quiet: bool) -> None:
    """vpatch keeps a vLLM fork's performance work as an ordered series of patches and overlays,
    lays it onto a pinned vLLM, builds it for gfx11, validates every entry and bisects regressions."""
    output.set_mode(json_mode=json_mode, quiet=quiet)
    ctx.obj = Context(series_path=series, workspace_path=workspace, json=json_mode)


def run_command(ctx: Context, fn, *args, render=None, **kwargs) -> None:
    """Run a command body; print its result (JSON or `render`), turn errors into one line + a log."""
    started = time.monotonic()
    try:
        result: CommandResult = fn(ctx, *args, **kwargs)
    except VpatchError as e:
        _fail(ctx, e.message, e.hint, e.exit_code, e.data, exc=e)
    except KeyboardInterrupt:
        _fail(ctx, "interrupted", "state is saved after every step: `vpatch status` shows where things stand", 130, {})
    except Exception as e:  # a bug: still one line, and the traceback in the log
        _fail(ctx, f"internal error: {type(e).__name__}: {e}", "this is a bug in vpatch; the log has the traceback", 70, {}, exc=e)
    else:
        result.data.setdefault("elapsed_s", round(time.monotonic() - started, 3))
        if output.json_mode():
            output.emit_json(result.data)
        elif render is not None:
            render(result.data)
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
        c = output.stderr
        c.print(f"[bold red]error:[/] {escape(message)}")
        if hint:
            c.print(f"[yellow]hint:[/] {escape(hint)}")
        if log_path and code == 70:
            c.print(f"log: {log_path}")
    sys.exit(code)


def main() -> None:
    cli(prog_name="vpatch")


if __name__ == "__main__":
    main()
