"""The README's gfx11 section: its vpatch.toml loads with vpatch's own loaders, its commands parse."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click

from vpatch.manager.cli.main import cli, hoist_global_options
from vpatch.manager.config import load_build_config

README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    return text[text.index("## On the gfx11 box"):]


def test_the_sample_vpatch_toml_loads(tmp_path):
    from vpatch.validation.measure import load_configs

    block = re.search(r"```toml\n(.*?)```", section(), re.S).group(1)
    path = tmp_path / "vpatch.toml"
    path.write_text(block)
    build = load_build_config(path)
    assert build.target == "rocm" and build.arch == ["gfx1151"]
    vcfg, _ = load_configs(path)
    assert (vcfg.input_len, vcfg.output_len, vcfg.max_model_len, vcfg.dtype) == (128, 128, 4096, "float16")
    assert vcfg.gsm8k.limit == 1000 and vcfg.gsm8k.batch_size == 1
    assert tomllib.loads(block)["nightly"]["metrics"] == ["tpot"]


def test_the_commands_parse_with_the_real_options():
    block = re.search(r"```sh\n(.*?)```", section(), re.S).group(1)
    seen = 0
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        if not argv or not argv[0].endswith("vpatch"):
            continue
        ctx = cli.make_context("vpatch", hoist_global_options(argv[1:]))
        name, cmd, rest = ctx.command.resolve_command(ctx, ctx.protected_args + ctx.args)
        cmd.make_context(name, rest, parent=ctx)  # raises on an unknown option or a bad choice
        assert not isinstance(cmd, click.Group)
        seen += 1
    assert seen >= 6
