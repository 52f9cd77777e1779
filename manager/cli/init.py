"""vpatch init: start a new, empty series."""
from __future__ import annotations

from pathlib import Path

import click

from .. import atomic, output
from ..errors import CommandResult, VpatchError
from ._common import run_command
from ..series import DEFAULT_SOURCE, parse_series
from ._common import pass_ctx

TEMPLATE = '''# vpatch series: the ordered entries laid onto the base, one commit each.
# `vpatch lint` checks this file; `vpatch apply` lays it down; `vpatch refresh` writes edits back.

[series]
name = "{name}"
base = "{base}"
source = "{source}"

# [[entry]]
# id = "my-change"                 # lower-case, unique; the patch file is patches/my-change.patch
# title = "what it does"
# area = "csrc"                    # csrc | fused_moe | model | rotary | moe-runner | ...
# upstream = "pending"             # or {{ submitted = "URL" }} or {{ merged = "v0.30.0" }}
# gate = {{ VLLM_SOMETHING = "1" }}  # env vars that switch it on (optional)
# checks = ["{{python}} {{series_dir}}/checks/my_change.py"]
# [[entry.claims]]
# metric = "tpot"
# direction = "lower"
# before = 15.20
# after = 15.11
# unit = "ms"
'''


@click.command("init")
@click.option("--base", required=True, help="The vLLM ref to pin (e.g. v0.28.0).")
@click.option("--source", default=DEFAULT_SOURCE, show_default=True, help="'pypi', a git URL or a local repository.")
@click.option("--name", default=None, help="A name for the series [default: the directory's name].")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@pass_ctx
def command(ctx, base, source, name, directory):
    """Start a new, empty series in DIRECTORY (default: here): patches/series.toml, overlay/, .gitignore."""

    def body(ctx):
        root = (directory or Path(".")).resolve()
        series_path = root / "patches" / "series.toml"
        if series_path.exists():
            raise VpatchError(f"{series_path} already exists", "edit it, or init in another directory")
        text = TEMPLATE.format(name=name or root.name, base=base, source=source)
        parse_series(text, series_path)  # the template must itself be valid
        atomic.write_text(series_path, text)
        (root / "overlay").mkdir(exist_ok=True)
        gi = root / ".gitignore"
        lines = gi.read_text().splitlines() if gi.exists() else []
        if ".vpatch/" not in lines:
            atomic.write_text(gi, "\n".join(lines + [".vpatch/"]) + "\n")
        return CommandResult({"series": str(series_path), "base": base, "source": source})

    run_command(ctx, body, render=lambda d: output.say(f"created {d['series']} (base {d['base']}, source {d['source']})"))
