"""Property-based tests (hypothesis) over series.toml and patch text: every input either loads or is
refused with one-line problems naming the file (and line or entry) — never a traceback, never exit 70.

Inputs are a valid series and patch, mutated: values of every field replaced by odd ones (wrong types,
nan/inf, bad ids, unknown keys), raw text cut, spliced or sprinkled with arbitrary characters or bytes
(not UTF-8 included), hunk headers renumbered, lines dropped or duplicated. Bounded by max_examples so the
module stays well under a minute."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpatch.manager.cli.main import cli
from vpatch.manager.errors import SeriesError
from vpatch.manager.lint import diff_problems, lint_series
from vpatch.manager.series import load_series

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])

PATCH = """From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: Kernel Dev <kd@fork.invalid>
Date: Tue, 28 Apr 2026 10:00:00 +0200
Subject: [PATCH] a: fast

TPOT 15.20 -> 15.11 ms.
---
 src/a.py | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/src/a.py b/src/a.py
index ae95a6a..d3af098 100644
--- a/src/a.py
+++ b/src/a.py
@@ -2,7 +2,7 @@ a 1
 a 2
 a 3
 a 4
-a 5
+a 5 fast
 a 6
 a 7
 a 8
@@ -20,3 +20,4 @@ a 19
 a 20
 a 21
+a 21.5
 a 22
--\x20
2.39.2

"""

ODD = st.one_of(
    st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(f), repr(f))),
    st.text(max_size=30).map(json.dumps), st.sampled_from(["true", "[]", "{}", "[1, \"a\"]", "{ merged = 3 }",
                                                            '{ submitted = "u" }', '"pending"', '"v0.20.0"', '""']),
    st.text(max_size=12))  # the last: not even a TOML value

KEYS = ["id", "title", "kind", "area", "patch", "upstream", "gate", "checks", "message", "author", "nosuch", "claims"]
CLAIM_KEYS = ["metric", "direction", "before", "after", "change_pct", "unit", "gate", "wrong"]


def series_text(header: dict[str, str], entries: list[dict[str, str]], claims: list[dict[str, str]]) -> str:
    out = ["[series]"] + [f"{k} = {v}" for k, v in header.items()]
    for i, e in enumerate(entries):
        out += ["", "[[entry]]"] + [f"{k} = {v}" for k, v in e.items()]
        if i == 0:
            for c in claims:
                out += ["[[entry.claims]]"] + [f"{k} = {v}" for k, v in c.items()]
    return "\n".join(out) + "\n"


def valid_entry(i: int) -> dict[str, str]:
    return {"id": f'"e{i}"', "title": f'"entry {i}"'}


@st.composite
def series_sources(draw) -> bytes:
    header = {"name": '"t"', "base": '"v1.0.0"', "source": '"pypi"'}
    if draw(st.booleans()):
        header[draw(st.sampled_from(["name", "base", "source", "package", "author", "odd"]))] = draw(ODD)
    if draw(st.integers(0, 5)) == 0:
        header.pop("base")
    entries = [valid_entry(i) for i in range(draw(st.integers(0, 3)))]
    for e in entries:
        if draw(st.booleans()):
            e[draw(st.sampled_from(KEYS))] = draw(ODD)
    claims = []
    if entries and draw(st.booleans()):
        c = {"metric": '"tpot"', "before": "15.2", "after": "15.1"}
        for _ in range(draw(st.integers(0, 3))):
            c[draw(st.sampled_from(CLAIM_KEYS))] = draw(ODD)
        claims.append(c)
    data = series_text(header, entries, claims).encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["as is", "cut", "insert", "bytes"]))
    if how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.text(max_size=8)).encode("utf-8", "surrogatepass") + data[at:]
    elif how == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=4)) + data[at:]
    return data


def one_line_problems(err: SeriesError, path: Path) -> None:
    assert err.problems
    for p in err.problems:
        text = str(p)
        assert "\n" not in text and str(path) in text, text
    assert "\n" not in err.message


@SETTINGS
@given(data=series_sources())
def test_series_toml_loads_or_names_the_problem(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("p")
    (d / "patches").mkdir()
    path = d / "patches" / "series.toml"
    path.write_bytes(data)
    for i in range(4):
        (d / "patches" / f"e{i}.patch").write_text(PATCH)
    try:
        s = load_series(path)
    except SeriesError as e:
        one_line_problems(e, path)
        return
    for p in lint_series(s):  # what loads, lint checks further: one line each as well
        assert "\n" not in str(p) and str(path.parent) in str(p.where.file), str(p)


@st.composite
def patch_texts(draw) -> str:
    lines = PATCH.split("\n")
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "dup", "renumber", "replace", "cut", "header"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "renumber":
            hunks = [k for k, ln in enumerate(lines) if ln.startswith("@@")]
            if hunks:
                k = draw(st.sampled_from(hunks))
                a, b, c, e = (draw(st.integers(0, 40)) for _ in range(4))
                lines[k] = f"@@ -{a},{b} +{c},{e} @@" + draw(st.sampled_from(["", " ctx"]))
        elif op == "replace":
            lines[i] = draw(st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t))
        elif op == "cut":
            lines = lines[:i]
        elif op == "header":
            k = next((k for k, ln in enumerate(lines) if ln.startswith(("---", "+++"))), None)
            if k is not None:
                lines[k] = lines[k][:6] + draw(st.sampled_from(["src/b.py", "../etc/x", "/abs", "src/a.py"]))
    return "\n".join(lines)


@SETTINGS
@given(text=patch_texts())
def test_patch_text_lints_or_names_file_and_line(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("p")
    (d / "patches").mkdir()
    (d / "patches" / "series.toml").write_text('[series]\nbase = "v1.0.0"\n\n[[entry]]\nid = "one"\ntitle = "t"\n')
    f = d / "patches" / "one.patch"
    f.write_text(text, errors="surrogateescape")
    for line, msg in diff_problems(text):
        assert line >= 1 and "\n" not in msg
    for p in lint_series(load_series(d / "patches" / "series.toml")):
        assert "\n" not in str(p) and str(f) in str(p) and "[entry one]" in str(p), str(p)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=series_sources(), patch=patch_texts())
def test_cli_lint_never_an_internal_error(tmp_path_factory, data, patch):
    """Through the real command line (in-process): exit 0 or 1, one-line problems, never 70."""
    d = tmp_path_factory.mktemp("p")
    (d / "patches").mkdir()
    (d / "patches" / "series.toml").write_bytes(data)
    for i in range(4):
        (d / "patches" / f"e{i}.patch").write_text(patch, errors="surrogateescape")
    r = CliRunner().invoke(cli, ["--series", str(d / "patches" / "series.toml"), "lint"])
    assert r.exit_code in (0, 1), (r.exit_code, r.output)
    assert "Traceback" not in r.output and "internal error" not in r.output
    r = CliRunner().invoke(cli, ["--json", "--series", str(d / "patches" / "series.toml"), "lint"])
    assert r.exit_code in (0, 1) and "internal error" not in r.output
