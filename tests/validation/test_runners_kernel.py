"""Kernel micro-benchmark and --run CMD runners, with real subprocesses."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest

from vpatch.validation.runners.command import run_command
from vpatch.validation.runners.kernel import KernelFormatError, parse_kernel_output, run_kernel_bench
from vpatch.validation.runners.process import RunnerError

BENCH = textwrap.dedent("""
    import json, random, sys
    print("compiling kernels...")                     # log lines are ignored
    rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for n in (2048, 768):
        s = [12.0 + rng.random() * 0.1 for _ in range(200)]
        print(json.dumps({"kernel": "moe_gemv_int4", "shape": {"m": 1, "n": n, "k": 768}, "unit": "us", "samples": s}))
    print(json.dumps({"kernel": "rmsnorm", "shape": "1x2048", "unit": "GB/s", "samples": [410.5, 411.0]}))
""")


def test_kernel_bench_runs_parses_and_names_each_shape(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(BENCH)
    runs = run_kernel_bench("{python} {series_dir}/bench.py 7", runs=2,
                            placeholders={"python": sys.executable, "series_dir": str(tmp_path)}, log_dir=tmp_path / "logs")
    assert len(runs) == 2 and runs[0].boot_id != runs[1].boot_id
    m = runs[0].by_metric()
    assert set(m) == {"kernel:moe_gemv_int4[k=768,m=1,n=2048]", "kernel:moe_gemv_int4[k=768,m=1,n=768]",
                      "kernel:rmsnorm[1x2048]"}
    g = m["kernel:moe_gemv_int4[k=768,m=1,n=2048]"]
    assert len(g.samples) == 200 and g.unit == "us" and g.direction == "lower"
    assert m["kernel:rmsnorm[1x2048]"].direction == "higher"
    assert (tmp_path / "logs" / "kernel-run001.out").exists()


@pytest.mark.parametrize("line, needle", [
    ('{"kernel": "k", "unit": "us", "samples": []}', "non-empty list"),
    ('{"kernel": "k", "unit": "us", "samples": [1, -2]}', "samples[1] = -2"),
    ('{"kernel": "k", "unit": "us", "samples": [1, NaN]}', "not a finite"),
    ('{"kernel": "k", "unit": "fortnights", "samples": [1]}', "'unit' must be one of"),
    ('{"kernel": "k k", "unit": "us", "samples": [1]}', "'kernel' must be a name"),
    ('{"kernel": "k", "unit": "us", "samples": [1], "shape": {"m": 1.5}}', "not an integer"),
    ('{"kernel": "k", "unit": "us", "samples": [1], "sample": [2]}', "unknown key"),
    ('{"kernel": "k", "unit": "us", "samples": [1]', "not valid JSON"),
    ('just text', "no JSON samples"),
])
def test_format_errors_are_clear(line, needle):
    with pytest.raises(KernelFormatError) as ei:
        parse_kernel_output("log line\n" + line + "\n", source="bench")
    assert needle in ei.value.message
    if "JSON" in needle or "kernel" in line:
        assert ei.value.message.startswith("bench")


def test_duplicate_shape_and_array_form():
    one = {"kernel": "k", "shape": [1, 2], "unit": "ms", "samples": [1.0]}
    with pytest.raises(KernelFormatError, match="appears twice"):
        parse_kernel_output(json.dumps(one) + "\n" + json.dumps(one))
    [s] = parse_kernel_output(json.dumps([one]))
    assert s.metric == "kernel:k[1x2]"
    [s] = parse_kernel_output(json.dumps({"results": [dict(one, shape=None)]}, indent=1))
    assert s.metric == "kernel:k"


def test_runs_must_agree_on_the_shapes(tmp_path):
    script = tmp_path / "b.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        f = sys.argv[1]
        n = int(open(f).read()) if os.path.exists(f) else 0
        open(f, "w").write(str(n + 1))
        print(json.dumps({"kernel": "k", "shape": f"s{n}", "unit": "us", "samples": [1.0]}))
    """))
    with pytest.raises(KernelFormatError, match="different set"):
        run_kernel_bench([sys.executable, str(script), str(tmp_path / "count")], runs=2)


def test_failing_bench_quotes_its_stderr(tmp_path):
    with pytest.raises(RunnerError, match="(?s)exit 3.*HIP error: invalid device function"):
        run_kernel_bench([sys.executable, "-c", "import sys; sys.stderr.write('HIP error: invalid device function\\n'); sys.exit(3)"])


def test_run_command_collects_one_number_per_run(tmp_path):
    script = tmp_path / "n.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        f = sys.argv[1]
        n = int(open(f).read()) if os.path.exists(f) else 0
        open(f, "w").write(str(n + 1))
        print("warming up")
        print(13.7 + n / 100)
    """))
    runs = run_command(f"{{python}} '{script}' '{tmp_path / 'c'}'", 3, placeholders={"python": sys.executable})
    assert [r.value for r in runs] == pytest.approx([13.70, 13.71, 13.72])
    assert len({r.boot_id for r in runs}) == 3


@pytest.mark.parametrize("code, needle", [
    ("print('13.7 ms')", "not a number"),
    ("pass", "printed nothing"),
    ("print('nan')", "not a finite"),
    ("import sys; print('oops', file=sys.stderr); sys.exit(2)", "exit 2"),
])
def test_run_command_errors(code, needle):
    with pytest.raises(RunnerError, match=needle):
        run_command([sys.executable, "-c", code], 1)


def test_run_command_never_uses_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    # `; touch` reaches python as plain arguments, not a shell
    [r] = run_command(f"{sys.executable} -c 'import sys; print(len(sys.argv))' ; touch {marker}", 1)
    assert r.value == 4 and not marker.exists()
    with pytest.raises(RunnerError, match="command not found"):
        run_command("definitely-not-a-command-xyz", 1)
