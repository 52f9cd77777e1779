"""The command line as a user types it: global options before or after the verb."""
from __future__ import annotations

import json

from conftest import SeriesDir
from vpatch.manager.cli.main import hoist_global_options


def test_global_options_after_the_verb_are_moved_before_it():
    assert hoist_global_options(["status", "--json"]) == ["--json", "status"]
    assert hoist_global_options(["apply", "--series", "s.toml", "-q", "--base", "v1"]) == \
        ["--series", "s.toml", "-q", "apply", "--base", "v1"]
    assert hoist_global_options(["--json", "check", "--workspace=w", "--onto", "v2"]) == \
        ["--json", "--workspace=w", "check", "--onto", "v2"]
    # after `--` nothing is touched
    assert hoist_global_options(["bisect", "--run", "x", "--", "--json"]) == ["bisect", "--run", "x", "--", "--json"]


def test_status_json_after_the_verb_gives_the_same_document(tmp_path, vp):
    s = SeriesDir(tmp_path / "fork", base="v1.0.0", source=str(tmp_path / "nowhere"))
    before, after = vp(s.root, "--json", "status"), vp(s.root, "status", "--json")
    assert before.rc == after.rc == 0, before.err + after.err
    a, b = json.loads(before.out), json.loads(after.out)
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert a == b


def test_help_lists_every_verb_with_its_own_words_without_importing_them():
    import importlib
    import re
    import subprocess
    import sys

    from vpatch.manager.cli.main import COMMANDS

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "vpatch.manager.cli.main", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for verb, (mod, line) in COMMANDS.items():
        assert re.search(rf"^\s+{verb}\s", r.stdout, re.M), verb
        assert f"vpatch.manager.cli.{mod}" not in r.stderr, f"--help imported {mod}"
        doc = " ".join((importlib.import_module(f"vpatch.manager.cli.{mod}").command.help or "").split())
        assert doc.startswith(line.rstrip(".")[:25]), (verb, line, doc[:80])


def test_every_help_example_parses_with_the_real_options(tmp_path, monkeypatch):
    """The examples under `vpatch VERB --help` name only verbs, options and choices that exist."""
    monkeypatch.chdir(tmp_path)
    for name in ("shard-1.sqlite", "shard-2.sqlite"):  # inputs the results example names
        (tmp_path / name).write_text("")
    import shlex

    import click

    from vpatch.manager.cli.main import EXAMPLES, cli

    for verb, lines in EXAMPLES.items():
        for line in lines:
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split, lex.commenters = True, "#"
            parts: list[list[str]] = [[]]
            for tok in lex:
                if tok in ("|", "||", "&&", ";"):
                    parts.append([])
                else:
                    parts[-1].append(tok)
            for argv in parts:
                if not argv or argv[0] != "vpatch":
                    continue
                args = hoist_global_options(argv[1:])
                ctx = cli.make_context("vpatch", list(args), resilient_parsing=False)
                cmd, rest = ctx.command, ctx.protected_args + ctx.args
                while isinstance(cmd, click.Group) and rest:
                    name, sub, rest = cmd.resolve_command(ctx, rest)
                    ctx = sub.make_context(name, rest, parent=ctx)
                    cmd, rest = sub, ctx.protected_args + ctx.args if isinstance(sub, click.Group) else []
                assert cmd.name in (verb, "vpatch") or verb in line, (verb, line)


def test_lint_and_status_of_an_applied_workspace_import_neither_pydantic_nor_gitpython(three_entries, vp):
    """The commands typed most start fast (benchmarks/bench_startup.py measures it): on a well-formed
    series and healthy state files, nothing on their path imports pydantic or GitPython."""
    import subprocess
    import sys

    s = three_entries
    assert vp(s.root, "apply").rc == 0
    for verb in ("lint", "status"):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "vpatch.manager.cli.main", verb], cwd=s.root,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
        heavy = ("pydantic", "git") + (("rich",) if verb == "status" else ())  # status prints plain text
        assert not imported & set(heavy), (verb, sorted(m for m in imported if m.startswith(heavy)))
    lines = r.stdout.splitlines()  # status's table: one row per entry, each applied and in sync
    assert lines[2].split() == ["entry", "kind", "state", "detail"], r.stdout
    assert [ln.split()[0] for ln in lines[3:]] == ["one", "ov", "two"], r.stdout
    assert all(ln.split()[2] == "applied" for ln in lines[3:]), r.stdout
