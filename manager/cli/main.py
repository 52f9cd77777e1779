"""The `vpatch` command line: global options and lazy dispatch to one module per verb in this package.

Nothing below ``vpatch.manager.cli`` imports it; the verb modules import the error handler from ``_common``."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from .. import output
from ..context import Context

# verb -> (module in vpatch.manager.cli defining `command`, one-line help for `vpatch --help`).
# The line is kept here so that `vpatch --help` imports no verb module (tests/manager/test_cli.py keeps
# each line the start of its command's own docstring).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("init", "Start a new, empty series in DIRECTORY (default: here)."),
    "lint": ("lint", "Validate the series: schema, unique ids, files present, no path leaving the tree."),
    "apply": ("apply", "Apply the series onto BASE in the workspace, one commit per entry."),
    "continue": ("continue_", "Commit the resolved entry (staged with `git add`) and apply the rest."),
    "skip": ("skip", "Drop the entry that stopped the operation and apply the rest."),
    "abort": ("abort", "Restore the branch, HEAD, index and work tree of before the operation."),
    "status": ("status", "Show the base, the workspace, each entry's state and whether applied commits match."),
    "refresh": ("refresh", "After editing commits in the workspace (amend, fixup, rebase -i), write them back."),
    "new": ("new", "Commit what is staged in the workspace as a new entry."),
    "import": ("import_", "Import the commits of REV_RANGE as patch entries."),
    "export": ("export", "Export the applied series: a branch to push or review, or mailable patches."),
    "verify": ("verify", "Prove that each entry applied in the workspace takes effect: run its `checks`."),
    "check": ("check", "Classify every entry on REF without touching any checkout."),
    "rebase": ("rebase", "Move the series onto REF in the workspace."),
    "drift": ("drift", "Walk the upstream commits FROM..TO: per entry, the first commit where it stops applying."),
    "build": ("build", "Build the workspace's prefix, reusing an earlier build when its inputs are unchanged."),
    "validate": ("validate", "Measure each prefix where the results store has nothing yet, then print the table."),
    "results": ("results", "Export or merge results stores."),
    "bisect": ("bisect", "Find the entry (or upstream commit) that moved a metric."),
    "nightly": ("nightly", "Nightly pipeline: check, rebase, build, validate, compare, bisect, report."),
    "report": ("report", "Report per entry (before → after, change, CI, p, n, verdict, claim, drift)."),
}

# One worked example per verb, shown at the end of `vpatch VERB --help`.
EXAMPLES: dict[str, list[str]] = {
    "init": ["vpatch init myfork --base v0.28.0 --source pypi   # patches/series.toml, overlay/, .gitignore"],
    "lint": ["vpatch lint && vpatch --json lint | jq .problems"],
    "apply": ["vpatch apply --base v0.28.0 --source pypi   # vLLM from PyPI sdists, no GitHub",
              "vpatch apply --reset                        # rebuild the branch, keeping a backup ref"],
    "continue": ["git -C .vpatch/vllm add -A && vpatch continue"],
    "skip": ["vpatch skip        # drop the entry that stopped, apply the rest"],
    "abort": ["vpatch abort       # back to the exact state before apply/rebase"],
    "status": ["vpatch status --json | jq '.entries[] | select(.state != \"applied\")'"],
    "refresh": ["git -C .vpatch/vllm commit --amend -a --no-edit && vpatch refresh"],
    "new": ["git -C .vpatch/vllm add -A && vpatch new my-fix --title 'MoE: skip empty experts'"],
    "import": ["vpatch import --repo ../vllm-fork v0.28.0..gfx11-moe"],
    "export": ["vpatch export --branch review/gfx11"],
    "verify": ["vpatch verify mrope-cos-sin-cache"],
    "check": ["vpatch check --onto v0.31.0 --checks   # text and effect, no checkout touched"],
    "rebase": ["vpatch rebase --onto v0.31.0 && vpatch status"],
    "drift": ["vpatch drift --from v0.28.0 --to v0.31.0 --source pypi"],
    "build": ["vpatch build --target cpu --explain   # say what would be reused or rebuilt",
              "vpatch build --target rocm            # on the gfx11 box"],
    "validate": ["vpatch validate --target cpu --metric tpot,ttft,outputs"],
    "results": ["vpatch results merge shard-1.sqlite shard-2.sqlite"],
    "bisect": ["vpatch bisect --metric tpot --threshold 1.0",
               "vpatch bisect --run 'python bench.py' --threshold 3   # any command printing numbers"],
    "nightly": ["vpatch nightly --upstream v0.29.0 || echo \"exit $? (10 drift, 20 regression, 30 infra)\""],
    "report": ["vpatch report --html report.html --markdown report.md"],
}


class LazyGroup(click.Group):
    """Loads a verb's module only when it runs, so `vpatch status` never imports scipy or torch."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (mod, _) in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        mod, _ = COMMANDS.get(name, (None, None))
        if mod is None or not _module_exists(mod):
            return None
        cmd = importlib.import_module(f"vpatch.manager.cli.{mod}").command
        if cmd.epilog is None and name in EXAMPLES:
            cmd.epilog = "\b\nExample:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _module_exists(mod: str) -> bool:
    return (Path(__file__).parent / f"{mod}.py").exists()


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


# Global options may also follow the verb (`vpatch status --json`): they are moved in front of it.
_GLOBAL_FLAGS = {"--json", "-q", "--quiet"}
_GLOBAL_VALUED = {"--series", "--workspace"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options written after the verb to before it; everything after ``--`` stays put."""
    head: list[str] = []
    i = 0
    while i < len(argv):  # the global options before the verb
        a = argv[i]
        if a in _GLOBAL_VALUED and i + 1 < len(argv):
            head += argv[i:i + 2]
            i += 2
        elif a in _GLOBAL_FLAGS or a.split("=", 1)[0] in _GLOBAL_VALUED or a in ("-h", "--help"):
            head.append(a)
            i += 1
        else:
            break
    hoisted: list[str] = []
    rest: list[str] = []
    tail = argv[i:]
    j = 0
    while j < len(tail):
        a = tail[j]
        if a == "--":
            rest += tail[j:]
            break
        if a in _GLOBAL_FLAGS or a.split("=", 1)[0] in _GLOBAL_VALUED and "=" in a:
            hoisted.append(a)
        elif a in _GLOBAL_VALUED and j + 1 < len(tail):
            hoisted += tail[j:j + 2]
            j += 1
        else:
            rest.append(a)
        j += 1
    return head + hoisted + rest


def main(argv: list[str] | None = None) -> None:
    from ..errors import raise_on_sigterm

    raise_on_sigterm()
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    cli(args=args, prog_name="vpatch")


if __name__ == "__main__":
    main()
