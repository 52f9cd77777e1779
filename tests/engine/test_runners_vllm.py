"""The latency runner against vLLM v0.28.0 itself (python-only install; slowest tests).

Needs ``VPATCH_TEST_VLLM_PYTHON``: the python of a venv with ``VLLM_TARGET_DEVICE=empty pip install -e .``
of vLLM v0.28.0 (and torch==2.13.0).

* the argv the runner builds for ``vllm serve``, ``vllm bench latency`` and ``vllm bench serve`` go
  through vLLM's own CLI (``vllm.entrypoints.cli.main.main``: its parsers and ``validate()``), with
  only the final command swapped for a dump of the parsed namespace;
* ``vllm bench latency`` runs vLLM's real ``vllm.benchmarks.latency.main`` (which writes the JSON)
  with only ``vllm.LLM`` replaced by a stand-in whose ``generate`` sleeps base + per-token time,
  through the runner's interleaved pairs: the TPOT it derives must be that per-token time;
* ``vllm bench serve`` (real, unmodified) measures the oracle server that the runner starts, stops
  and reads the ``--save-result`` JSON of; the oracle's TPOT is set by env, like a gated entry.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_series_part1 import fork28, part1_cache, release_repo, runtime28  # noqa: F401 (session fixtures)

from vpatch.validation.config import ValidateConfig
from vpatch.validation.runners.latency import (
    bench_serve_argv,
    gate_env,
    latency_argv,
    measure_latency_pairs,
    measure_serve_boot,
    serve_argv,
)
from vpatch.validation.runners.process import free_port
from vpatch.validation.tinymodel import build_tokenizer, default_data_dir, oracle_argv

pytestmark = pytest.mark.venv

PROBE = textwrap.dedent('''
    """Run vLLM's CLI main() on each argv in a JSON file; PROBE_MODE=parse dumps parsed args instead of running."""
    import json, os, sys, time

    mode = os.environ.get("PROBE_MODE", "parse")
    paths = sys.argv[1:3]
    import vllm.entrypoints.cli.benchmark.latency as bl
    import vllm.entrypoints.cli.benchmark.serve as bs
    import vllm.entrypoints.cli.serve as sv
    from vllm.entrypoints.cli.main import main

    if mode == "parse":
        results = []
        def dump(args):
            results.append({k: v for k, v in vars(args).items()
                            if isinstance(v, (str, int, float, bool, type(None), list))})
        for cls in (bl.BenchmarkLatencySubcommand, bs.BenchmarkServingSubcommand, sv.ServeSubcommand):
            cls.cmd = staticmethod(dump)
        out = []
        for argv in json.load(open(paths[0])):
            sys.argv = ["vllm"] + argv
            results.clear()
            try:
                main()
                out.append({"ok": True, "args": results[0] if results else None})
            except SystemExit as e:
                out.append({"ok": False, "exit": e.code})
        json.dump(out, open(paths[1], "w"), default=str)
    else:  # fake-engine: real latency.main, stand-in LLM
        import vllm
        base = float(os.environ.get("PROBE_BASE_S", "0.004"))
        per_tok = float(os.environ.get("PROBE_PER_TOKEN_S", "0.001"))
        class _O: pass
        class FakeLLM:
            @classmethod
            def from_engine_args(cls, ea):
                o = cls(); o.llm_engine = _O(); o.llm_engine.model_config = _O()
                o.llm_engine.model_config.max_model_len = ea.max_model_len
                return o
            def generate(self, prompts, sampling_params=None, use_tqdm=False):
                assert len(prompts) == 1  # batch 1
                time.sleep(base + per_tok * sampling_params.max_tokens)
        vllm.LLM = FakeLLM
        sys.argv = ["vllm"] + sys.argv[1:]
        main()
''')


@pytest.fixture(scope="module")
def vllm_python(request):
    """$VPATCH_TEST_VLLM_PYTHON, else the python-only install of the patched v0.28.0 workspace that the
    series tests build once per session (cached under $VPATCH_CACHE)."""
    py = os.environ.get("VPATCH_TEST_VLLM_PYTHON")
    if not py:
        py = str(request.getfixturevalue("runtime28"))
    if not Path(py).exists():
        pytest.skip(f"VPATCH_TEST_VLLM_PYTHON={py} does not exist")
    r = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not r.stdout.strip().startswith("0.28.0"):
        pytest.skip(f"{py} has no vLLM v0.28.0 ({r.stdout.strip() or r.stderr.strip()[-200:]})")
    return py


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    p = tmp_path_factory.mktemp("probe") / "vllm_cli_probe.py"
    p.write_text(PROBE)
    return p


def test_vllms_own_parsers_accept_the_runner_argv(vllm_python, probe, tmp_path):
    cfg = ValidateConfig(dtype="float16", gpu_memory_gb=24, device_memory_gb=96)
    frac = cfg.gpu_memory_utilization()
    argvs = [
        latency_argv(cfg, output_len=1, output_json=tmp_path / "l.json", gpu_memory_utilization=frac),
        serve_argv(cfg, port=8123, gpu_memory_utilization=frac),
        bench_serve_argv(cfg, base_url="http://127.0.0.1:8123", result_dir=tmp_path, result_filename="r.json",
                         tokenizer="/some/tokenizer"),
        ["bench", "latency", "--no-such-flag", "1"],  # control: the parser is strict
    ]
    (tmp_path / "argv.json").write_text(json.dumps(argvs))
    r = subprocess.run([vllm_python, str(probe), str(tmp_path / "argv.json"), str(tmp_path / "out.json")],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, PROBE_MODE="parse"))
    assert r.returncode == 0, r.stderr[-3000:]
    lat, srv, bench, bogus = json.loads((tmp_path / "out.json").read_text())
    assert lat["ok"] and srv["ok"] and bench["ok"], r.stderr[-3000:]
    assert not bogus["ok"] and bogus["exit"] == 2
    a = lat["args"]
    assert (a["bench_type"], a["input_len"], a["output_len"], a["batch_size"]) == ("latency", 128, 1, 1)
    assert (a["model"], a["max_model_len"], a["dtype"], a["trust_remote_code"]) == (cfg.model, 4096, "float16", True)
    assert a["gpu_memory_utilization"] == 0.25 and a["output_json"] == str(tmp_path / "l.json")
    assert a["enforce_eager"] is False
    s = srv["args"]
    assert s["model_tag"] == cfg.model and s["port"] == 8123 and s["host"] == "127.0.0.1"
    assert s["gpu_memory_utilization"] == 0.25 and s["max_model_len"] == 4096 and s["trust_remote_code"] is True
    b = bench["args"]
    assert (b["backend"], b["base_url"], b["max_concurrency"], b["dataset_name"]) == ("vllm", "http://127.0.0.1:8123", 1, "random")
    # v0.28.0 takes the range ratio as a string (a float or a JSON dict), parsed later
    assert (b["random_input_len"], b["random_output_len"], b["random_range_ratio"]) == (128, 128, "0.0")
    assert b["save_result"] and b["save_detailed"] and b["ignore_eos"] and b["result_dir"] == str(tmp_path)
    assert b["result_filename"] == "r.json" and b["tokenizer"] == "/some/tokenizer" and b["temperature"] == 0.0


def test_latency_pairs_through_vllms_own_latency_main(vllm_python, probe, tmp_path):
    cfg = ValidateConfig(input_len=16, output_len=32, num_iters=3, num_iters_warmup=1, model="stand-in/model")
    env = {"PROBE_MODE": "fake-engine", "PROBE_BASE_S": "0.005", "PROBE_PER_TOKEN_S": "0.002"}
    [pair] = measure_latency_pairs(vllm_python, cfg, tmp_path, pairs=1, env=env, vllm=[vllm_python, str(probe)])
    # the JSON was written by vLLM's latency.main: its exact layout
    doc = json.loads(pair.at_L.path.read_text())
    assert set(doc) == {"avg_latency", "latencies", "percentiles"} and len(doc["latencies"]) == 3
    assert set(doc["percentiles"]) == {"10", "25", "50", "75", "90", "99"}
    assert pair.tpot_ms == pytest.approx(2.0, rel=0.1)
    assert 4.0 <= pair.ttft_ms <= 30  # 7 ms asked (extrapolated from two lengths); sleeps overshoot under load


def test_bench_serve_measures_a_server_the_runner_starts_and_stops(vllm_python, tmp_path):
    tok_dir = tmp_path / "tok"
    build_tokenizer(tok_dir, default_data_dir(), vocab_size=512, n_texts=500)
    cfg = ValidateConfig(input_len=32, output_len=16, num_prompts=4, runs_per_boot=1, readiness_timeout_s=60)
    tpot = {}
    for state, gate in (("off", {}), ("on", {"VPATCH_TINY_TPOT_MS": "6"})):
        port = free_port()
        boot = measure_serve_boot(vllm_python, cfg, tmp_path / state,
                                  env=gate_env(gate, "on" if gate else "none", {"VPATCH_TINY_TPOT_MS": "2"}),
                                  server_argv=oracle_argv(sys.executable, port, ttft_ms=5), port=port,
                                  model="vpatch-oracle", tokenizer=str(tok_dir))
        [run] = boot.runs
        assert run.completed == 4 and run.output_lens == [16] * 4 and len(run.itls_s[0]) == 15
        assert set(run.raw) >= {"median_tpot_ms", "median_ttft_ms", "ttfts", "itls", "max_concurrency"}
        assert run.raw["max_concurrency"] == 1
        assert "oracle stopped" in boot.server_log.read_text()  # the server was stopped cleanly
        tpot[state] = run.median_tpot_ms
        # the oracle holds the first token 5 ms; what comes on top is HTTP and client overhead, which a loaded
        # 2-core machine stretches (10.9 ms seen in CI): a floor the server guarantees and a ceiling that still
        # catches a unit slip (seconds read as ms, or the reverse)
        assert 4.5 <= run.median_ttft_ms <= 50
    assert tpot["off"] == pytest.approx(2.0, rel=0.25)
    assert tpot["on"] == pytest.approx(6.0, rel=0.15)
