"""The latency runner without vLLM: argv it builds, the v0.28.0 result layouts it reads, pair interleaving.

(tests/engine/test_runners_vllm.py checks the same argv against vLLM v0.28.0's own parsers and reads JSON
written by its own code.)
"""
from __future__ import annotations

import json
import sys
import textwrap

import pytest

from vpatch.validation.config import ValidateConfig
from vpatch.validation.runners.latency import (
    bench_serve_argv,
    gate_env,
    gate_states,
    latency_argv,
    measure_latency_pairs,
    read_latency_json,
    read_serve_json,
    serve_argv,
    tpot_from_latencies,
)
from vpatch.validation.runners.process import RunnerError

CFG = ValidateConfig(dtype="float16", gpu_memory_gb=24, device_memory_gb=96)


def flag(argv, name):
    return argv[argv.index(name) + 1]


def test_latency_argv_is_batch_one_at_the_asked_output_length(tmp_path):
    a = latency_argv(CFG, output_len=1, output_json=tmp_path / "o.json", gpu_memory_utilization=0.25)
    assert a[:2] == ["bench", "latency"]
    assert flag(a, "--output-len") == "1" and flag(a, "--input-len") == "128" and flag(a, "--batch-size") == "1"
    assert flag(a, "--model") == CFG.model and flag(a, "--max-model-len") == "4096"
    assert flag(a, "--dtype") == "float16" and "--trust-remote-code" in a
    assert flag(a, "--gpu-memory-utilization") == "0.2500" and flag(a, "--output-json") == str(tmp_path / "o.json")
    assert "--enforce-eager" not in a


def test_serve_and_bench_serve_argv(tmp_path):
    s = serve_argv(CFG, port=8123)
    assert s[:2] == ["serve", CFG.model] and flag(s, "--port") == "8123" and flag(s, "--host") == "127.0.0.1"
    assert flag(s, "--gpu-memory-utilization") == "0.2500"  # 24 GB of the configured 96 GB device
    assert "--gpu-memory-utilization" not in serve_argv(ValidateConfig(), port=1)  # vLLM's default
    b = bench_serve_argv(CFG, base_url="http://127.0.0.1:8123", result_dir=tmp_path, result_filename="r.json")
    assert b[:2] == ["bench", "serve"]
    assert flag(b, "--max-concurrency") == "1" and flag(b, "--dataset-name") == "random"
    assert flag(b, "--random-input-len") == "128" and flag(b, "--random-output-len") == "128"
    assert flag(b, "--random-range-ratio") == "0.0"
    assert {"--save-result", "--save-detailed", "--ignore-eos"} <= set(b)
    assert flag(b, "--result-dir") == str(tmp_path) and flag(b, "--base-url") == "http://127.0.0.1:8123"


def test_gpu_memory_gb_without_a_readable_device_is_a_clear_error(monkeypatch):
    import vpatch.validation.config as c

    monkeypatch.setattr(c, "device_total_memory_gb", lambda: None)
    with pytest.raises(c.ConfigError, match="total memory") as ei:
        serve_argv(ValidateConfig(gpu_memory_gb=24), port=1)
    assert "device_memory_gb" in ei.value.hint


def test_eager_mode_is_refused():
    with pytest.raises(RunnerError, match="eager") as ei:
        serve_argv(ValidateConfig(extra_args=["--enforce-eager"]), port=1)
    assert "graph" in ei.value.hint


def test_gate_env_on_off_none():
    base = {"PATH": "/bin", "VLLM_MOE_HIP_MEGAKERNEL": "1"}
    gate = {"VLLM_MOE_HIP_MEGAKERNEL": "1"}
    assert gate_env(gate, "off", base) == {"PATH": "/bin"}  # off wins over an inherited setting
    assert gate_env(gate, "on", {"PATH": "/bin"})["VLLM_MOE_HIP_MEGAKERNEL"] == "1"
    assert gate_env({}, "none", base) == base
    assert [s for s, _ in gate_states(gate, base)] == ["off", "on"]
    assert [s for s, _ in gate_states({}, base)] == ["none"]
    with pytest.raises(RunnerError):
        gate_env({}, "on", base)


# vLLM v0.28.0 vllm/benchmarks/latency.py, main(), lines 164-176: results = {"avg_latency": np.mean(latencies),
# "latencies": latencies.tolist(), "percentiles": dict(zip(percentages, percentiles.tolist()))}; json.dump(..., indent=4)
# (int percentile keys become strings).
def latency_layout(lat):
    import numpy as np

    a = np.array(lat)
    pct = [10, 25, 50, 75, 90, 99]
    return {"avg_latency": np.mean(a), "latencies": a.tolist(), "percentiles": dict(zip(pct, np.percentile(a, pct).tolist(), strict=True))}


def test_reads_bench_latency_json(tmp_path):
    p = tmp_path / "l.json"
    p.write_text(json.dumps(latency_layout([0.5, 0.52, 0.51]), indent=4))
    r = read_latency_json(p)
    assert r.latencies_s == [0.5, 0.52, 0.51] and r.median_s == 0.51 and r.percentiles_s[50] == pytest.approx(0.51)
    p.write_text('{"avg_latency": 1}')
    with pytest.raises(RunnerError, match="latencies"):
        read_latency_json(p)
    with pytest.raises(RunnerError, match="no result file"):
        read_latency_json(tmp_path / "missing.json")


# vLLM v0.28.0 vllm/benchmarks/serve.py: result_json keys from main_async (lines 2214-2247) merged with
# benchmark()'s result (lines 1260-1281) and process_one_metric's mean_/median_/std_/pNN_ keys (1321-1358).
def serve_layout(n=3, out_len=4, tpot_s=0.010, ttft_s=0.050, failed=0, detailed=True):
    itls = [[tpot_s] * (out_len - 1) for _ in range(n)]
    d = {"date": "20261125-120000", "endpoint_type": "vllm", "backend": "vllm", "label": None, "model_id": "m",
         "tokenizer_id": "m", "num_prompts": n, "request_rate": "inf", "burstiness": 1.0, "max_concurrency": 1,
         "duration": 1.0, "completed": n - failed, "failed": failed, "total_input_tokens": 128 * n,
         "total_output_tokens": out_len * n, "request_throughput": 1.0, "request_goodput": None,
         "output_throughput": 1.0, "total_token_throughput": 1.0, "max_output_tokens_per_s": 1.0,
         "max_concurrent_requests": 1, "rtfx": 0.0}
    for m, v in (("ttft", ttft_s), ("tpot", tpot_s), ("itl", tpot_s), ("e2el", ttft_s + tpot_s * (out_len - 1))):
        d.update({f"mean_{m}_ms": v * 1000, f"median_{m}_ms": v * 1000, f"std_{m}_ms": 0.0, f"p99_{m}_ms": v * 1000})
    if detailed:
        d.update({"input_lens": [128] * n, "output_lens": [out_len] * n, "ttfts": [ttft_s] * n, "itls": itls,
                  "start_times": [0.0] * n, "generated_texts": ["x"] * n,
                  "errors": [""] * (n - failed) + ["Traceback ...\nConnectionResetError"] * failed})
    return d


def test_reads_bench_serve_json(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(serve_layout()))
    r = read_serve_json(p, expect_output_len=4)
    assert r.metrics() == {"tpot": pytest.approx(10.0), "ttft": pytest.approx(50.0), "itl": pytest.approx(10.0)}
    assert r.ttfts_s == [0.05] * 3 and len(r.itls_s[0]) == 3 and r.completed == 3
    with pytest.raises(RunnerError, match=r"produced \[4\] tokens, not 128"):
        read_serve_json(p, expect_output_len=128)
    p.write_text(json.dumps(serve_layout(failed=1)))
    with pytest.raises(RunnerError, match="1 of 3 requests failed: ConnectionResetError"):
        read_serve_json(p)
    p.write_text(json.dumps(serve_layout(detailed=False)))
    with pytest.raises(RunnerError, match="ttfts") as ei:
        read_serve_json(p)
    assert "--save-detailed" in ei.value.hint
    d = serve_layout()
    del d["median_tpot_ms"]
    p.write_text(json.dumps(d))
    with pytest.raises(RunnerError, match="median_tpot_ms"):
        read_serve_json(p)


def test_tpot_from_e2el_is_steady_where_streaming_bursts_move_time_between_ttft_and_tpot(tmp_path):
    # two runs of one engine speed: in the second the API server held the first token back and then sent the
    # rest in a burst, so vLLM's per-request TPOT collapses while the end-to-end latency is the same
    steady = serve_layout(out_len=16, tpot_s=0.010, ttft_s=0.050)
    burst = serve_layout(out_len=16, tpot_s=0.010, ttft_s=0.050)
    burst.update(median_ttft_ms=190.0, median_tpot_ms=0.6667, median_itl_ms=0.0)
    got = {}
    for name, d in (("steady", steady), ("burst", burst)):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(d))
        r = read_serve_json(p, expect_output_len=16)
        got[name] = (r.metrics()["tpot"], r.metrics("e2el")["tpot"])
    assert got["steady"][0] / got["burst"][0] > 10  # median TPOT: 10 ms vs 0.67 ms
    assert got["steady"][1] == got["burst"][1] == pytest.approx((50 + 15 * 10) / 16)  # e2el / output_len
    d = serve_layout()
    del d["median_e2el_ms"]
    p = tmp_path / "no_e2el.json"
    p.write_text(json.dumps(d))
    r = read_serve_json(p)
    assert r.metrics()["tpot"] == pytest.approx(10.0)
    with pytest.raises(RunnerError, match="median_e2el_ms"):
        r.metrics("e2el")


def test_tpot_from_cpu_time_is_the_servers_cpu_ms_per_generated_token(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(serve_layout(n=4, out_len=16)))
    r = read_serve_json(p, expect_output_len=16)
    with pytest.raises(RunnerError, match="CPU time was not read"):
        r.metrics("cpu_time")
    r.server_cpu_s = 1.28  # what measure_serve_boot reads from /proc around the run
    assert r.metrics("cpu_time")["tpot"] == pytest.approx(1280 / 64)
    assert r.metrics("cpu_time")["ttft"] == r.metrics()["ttft"]  # TTFT stays what the client saw


def test_cpu_profile_derives_tpot_from_cpu_time_and_hashes_it():
    from vpatch.validation.config import ValidateConfig, cpu_config

    base = ValidateConfig()
    cpu = cpu_config(base, "/m")
    assert base.tpot_from == "median_tpot" and cpu.tpot_from == "cpu_time"
    assert "tpot_from" not in base.canonical("latency")  # hashes from before the field stay valid
    assert cpu.canonical("latency")["tpot_from"] == "cpu_time" and "tpot_from" not in cpu.canonical("accuracy")


def test_tpot_from_latency_difference():
    assert tpot_from_latencies(0.030, 0.030 + 127 * 0.0137, 128) == pytest.approx(13.7)
    with pytest.raises(RunnerError):
        tpot_from_latencies(1, 2, 1)


FAKE_VLLM = textwrap.dedent("""
    # stands in for `vllm`: records the order of output lengths, writes v0.28.0's latency JSON layout
    import json, sys
    a = sys.argv[1:]
    assert a[:2] == ["bench", "latency"], a
    L = int(a[a.index("--output-len") + 1]); out = a[a.index("--output-json") + 1]
    with open(sys.argv[0] + ".order", "a") as f:
        f.write(f"{L}\\n")
    lat = [0.020 + 0.001 * (L - 1) + j * 1e-5 for j in range(3)]
    json.dump({"avg_latency": sum(lat) / 3, "latencies": lat, "percentiles": {"50": lat[1]}}, open(out, "w"), indent=4)
""")


def test_latency_pairs_interleave_and_derive_ttft_and_tpot(tmp_path):
    fake = tmp_path / "fake_vllm.py"
    fake.write_text(FAKE_VLLM)
    pairs = measure_latency_pairs(sys.executable, ValidateConfig(), tmp_path / "w", pairs=2,
                                  vllm=[sys.executable, str(fake)])
    assert (tmp_path / "fake_vllm.py.order").read_text().split() == ["1", "128", "1", "128"]
    assert len({p.boot_id for p in pairs}) == 2
    for p in pairs:
        assert p.ttft_ms == pytest.approx(20.01)
        assert p.tpot_ms == pytest.approx(1.0)
