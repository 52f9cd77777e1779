"""Boot cost and noise of the real CPU vLLM engine: the figures the cpu target's defaults come from.

Run on demand (each boot is one ``vllm serve`` start of the engine; minutes per boot on 2 cores)::

    python benchmarks/bench_engine_noise.py --engine base=PATH/bin/vllm [--engine slow=PATH2/bin/vllm] \\
        --model DIR --boots 6 --runs 3 --out benchmarks/data/engine_noise_cpu.json

``--engine LABEL=VLLM[@PYTHONPATH]``: the ``vllm`` executable of a build (``vpatch build --target cpu``
makes one per prefix under ``.vpatch/builds/cpu/<tree>/bin/vllm``), optionally with a PYTHONPATH put
first (a patched copy of vLLM's python tree). With several engines the boots cycle through them
(A B A B …), so a variant's effect is measured against a baseline from the same period.

Per boot: seconds from ``vllm serve`` to a healthy ``/health`` (and the phases read from the server
log: engine init, compile), then ``--runs`` runs of ``vllm bench serve`` (random dataset, input 32,
output ``--output-len``, ``--num-prompts`` prompts, ``--max-concurrency 1``) each with its median TPOT
and TTFT and the per-request TPOT, then greedy token ids and logprobs for four fixed prompts. The load
average (1, 5, 15 min) is recorded before and after every step: the machine may be shared, and the
spread depends on it.

The JSON written (``--out``, appended to when it exists) is the "real engine noise model" that the
statistics benchmarks replay::

    {"format": "vpatch-engine-noise/1", "host": {...}, "model": {...},
     "boots": [{"engine": "base", "boot_s": 71.2, "load": [l1, l5, l15], "healthy": true,
                "phases": {"init_engine_s": 29.2, "compile_s": 15.1},
                "runs": [{"median_tpot_ms": 17.1, "median_ttft_ms": 52.3, "req_tpot_ms": [...],
                          "load": [...], "wall_s": 35.0}, ...],
                "outputs": [{"tokens": [...], "logprobs": [...]}, ...]}, ...]}

Printed: per engine the boot cost (median, range), the within-boot spread (median over boots of the
runs' coefficient of variation), the between-boot spread (CV of the boot medians), both split by the
load average at the time, and each variant's change against the first engine (ratio of medians of
boot medians), and whether its greedy outputs match the first engine's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

FORMAT = "vpatch-engine-noise/1"
PROMPTS = ("Question: Tom has 3 apples and buys 5 more. How many apples", "Answer: The total cost is",
           "Question: A train travels 60 miles", "Natalia sold clips to 48 of her friends")
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
PHASES = {"init_engine_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
          "compile_s": r"torch\.compile takes ([\d.]+) s|Compilation took ([\d.]+) s"}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def healthy(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
    except Exception:
        return False


def greedy(port: int, model: str) -> list[dict]:
    out = []
    for q in PROMPTS:
        body = json.dumps({"model": model, "prompt": q, "max_tokens": 32, "temperature": 0, "logprobs": 1}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                     {"Content-Type": "application/json"})
        try:
            lp = json.loads(urllib.request.urlopen(req, timeout=600).read())["choices"][0]["logprobs"]
            out.append({"tokens": lp["tokens"], "logprobs": lp["token_logprobs"]})
        except Exception as e:  # recorded, not fatal: the timing samples still count
            out.append({"error": str(e)[:300]})
    return out


def bench_run(vllm: str, env: dict, model: str, port: int, a, seed: int, rdir: Path) -> dict:
    name = f"run-{time.time_ns()}.json"
    t0, l0 = time.monotonic(), load()
    subprocess.run([vllm, "bench", "serve", "--backend", "vllm", "--model", model, "--port", str(port),
                    "--dataset-name", "random", "--random-input-len", str(a.input_len),
                    "--random-output-len", str(a.output_len), "--num-prompts", str(a.num_prompts),
                    "--max-concurrency", "1", "--ignore-eos", "--seed", str(seed), "--save-result",
                    "--save-detailed", "--result-dir", str(rdir), "--result-filename", name,
                    "--percentile-metrics", "ttft,tpot,itl,e2el"],
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    d = json.loads((rdir / name).read_text())
    req = [1000 * sum(itl) / len(itl) for itl in d.get("itls", []) if itl]
    return {"median_tpot_ms": d["median_tpot_ms"], "mean_tpot_ms": d["mean_tpot_ms"],
            "median_ttft_ms": d["median_ttft_ms"], "median_e2el_ms": d.get("median_e2el_ms"),
            "duration_s": d["duration"], "req_tpot_ms": req,
            "load": l0, "load_end": load(), "wall_s": round(time.monotonic() - t0, 2)}


def boot(label: str, vllm: str, pythonpath: str | None, a, logdir: Path) -> dict:
    env = {**os.environ, **ENV}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    rec: dict = {"engine": label, "time": time.time(), "load": load(), "runs": []}
    log = logdir / f"{label}-{time.time_ns()}.log"
    t0 = time.monotonic()
    p = subprocess.Popen([vllm, "serve", a.model, "--dtype", "float32", "--max-model-len", "512",
                          "--max-num-seqs", "4", "--port", str(a.port), *a.serve_arg],
                         env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while time.monotonic() - t0 < a.readiness_timeout and p.poll() is None and not healthy(a.port):
            time.sleep(0.25)
        rec["boot_s"] = round(time.monotonic() - t0, 2)
        rec["healthy"] = healthy(a.port)
        rec["load_healthy"] = load()
        text = log.read_text(errors="replace")
        rec["phases"] = {k: float(next(g for g in m.groups() if g)) for k, rx in PHASES.items()
                         if (m := re.search(rx, text))}
        if rec["healthy"]:
            for r in range(a.runs):
                try:
                    rec["runs"].append(bench_run(vllm, env, a.model, a.port, a, r, logdir))
                except Exception as e:
                    rec["runs"].append({"error": str(e)[:300]})
            rec["outputs"] = greedy(a.port, a.model)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return rec


def cv(xs: list[float]) -> float | None:
    return statistics.stdev(xs) / statistics.mean(xs) * 100 if len(xs) > 1 else None


def summarize(data: dict, metric: str = "median_tpot_ms") -> dict:
    """Per engine: boot cost, within-boot and between-boot spread (in %), split at load 2 (cores)."""
    out: dict = {}
    by: dict[str, list[dict]] = {}
    for b in data["boots"]:
        if b.get("healthy"):
            by.setdefault(b["engine"] + (f"/{b['mode']}" if b.get("mode") else ""), []).append(b)
    firsts: dict[str, tuple] = {}
    for eng, boots in by.items():
        meds, within, rows = [], [], []
        for b in boots:
            vals = [r[metric] for r in b["runs"] if r.get(metric) is not None]
            if not vals:
                continue
            meds.append(statistics.median(vals))
            if len(vals) > 1:
                within.append(cv(vals))
            rows.append((statistics.mean(r["load"][0] for r in b["runs"] if "load" in r), statistics.median(vals)))
        s = {"boots": len(boots), "boot_s_median": statistics.median(b["boot_s"] for b in boots),
             "boot_s_range": [min(b["boot_s"] for b in boots), max(b["boot_s"] for b in boots)],
             "median_ms": statistics.median(meds) if meds else None,
             "within_boot_cv_pct": statistics.median(within) if within else None,
             "between_boot_cv_pct": cv(meds),
             "load_range": [min(r[0] for r in rows), max(r[0] for r in rows)] if rows else None}
        for name, keep in (("load<2", lambda x: x < 2), ("load>=2", lambda x: x >= 2)):
            part = [m for ld, m in rows if keep(ld)]
            s[f"between_boot_cv_pct_{name}"] = cv(part)
            s[f"boots_{name}"] = len(part)
        mode = eng.partition("/")[2]
        first = firsts.get(mode)  # variants are compared with the first engine of the same mode
        if first is None:
            firsts[mode] = (eng, s["median_ms"], boots)
        elif s["median_ms"] and first[1]:
            s["change_vs_" + first[0] + "_pct"] = (s["median_ms"] / first[1] - 1) * 100
            ref = next((b["outputs"] for b in first[2] if b.get("outputs")), None)
            mine = next((b["outputs"] for b in boots if b.get("outputs")), None)
            if ref and mine:
                s["outputs_vs_" + first[0]] = "identical" if [o.get("tokens") for o in ref] == \
                    [o.get("tokens") for o in mine] else "differs"
        out[eng] = s
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", action="append", required=True, help="LABEL=VLLM[@PYTHONPATH]; repeat to cycle")
    ap.add_argument("--model", required=True, help="a local model directory (validation.tinymodel)")
    ap.add_argument("--boots", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--readiness-timeout", type=float, default=1800)
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `vllm serve` argument (repeat)")
    ap.add_argument("--out", type=Path, default=Path("engine_noise.json"))
    ap.add_argument("--summary-only", action="store_true", help="print the summary of --out and exit")
    a = ap.parse_args(argv)
    data = json.loads(a.out.read_text()) if a.out.exists() else {
        "format": FORMAT, "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "node": platform.node()},
        "model": {"path": a.model}, "boots": []}
    if not a.summary_only:
        engines = []
        for spec in a.engine:
            label, _, rest = spec.partition("=")
            vllm, _, pp = rest.partition("@")
            engines.append((label, vllm, pp or None))
        logdir = a.out.parent / (a.out.stem + "-logs")
        logdir.mkdir(parents=True, exist_ok=True)
        for i in range(a.boots):
            label, vllm, pp = engines[i % len(engines)]
            rec = boot(label, vllm, pp, a, logdir)
            data["boots"].append(rec)
            a.out.write_text(json.dumps(data, indent=1))
            print(f"{label} boot {i}: {rec['boot_s']:.0f} s, load {rec['load'][0]:.1f}, TPOT "
                  + ", ".join(f"{r['median_tpot_ms']:.2f}" for r in rec["runs"] if "median_tpot_ms" in r), flush=True)
    print(json.dumps({m: summarize(data, m) for m in ("median_tpot_ms", "median_e2el_ms")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
