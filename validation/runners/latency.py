"""Decode TPOT and TTFT through vLLM's own benchmarks, run in the build's environment (a ``python``).

Two ways, both with argv lists (``[python, "-m", "vllm.entrypoints.cli.main", ...]`` is the ``vllm``
console script of that interpreter):

1. **serve + bench serve** (the default; one server start is one *boot*, the unit of replication):
   :func:`measure_serve_boot` starts ``vllm serve`` (own process group, log file), polls ``/health``
   until the readiness timeout, runs ``vllm bench serve`` ``runs`` times against it with
   ``--max-concurrency 1``, the random dataset at fixed input/output lengths, ``--save-result
   --save-detailed --result-dir``, reads each JSON (``median_tpot_ms``, ``median_ttft_ms``,
   ``median_itl_ms`` and the per-request ``ttfts``/``itls`` lists), and stops the server (TERM, then
   KILL).

2. **bench latency pairs**: :func:`measure_latency_pairs` runs ``vllm bench latency`` at output length
   1 and at output length L, alternating (1, L, 1, L, ...).  TTFT = median latency at output 1;
   TPOT = (median latency at L - median latency at 1) / (L - 1).  Each pair is one boot.

Both refuse ``--enforce-eager`` in the config's extra args: decode steps must be measured in graph
mode (eager launches spread ~15 % between runs, graphs ~0.15 %).

Layouts parsed (vLLM v0.28.0):

* ``vllm/benchmarks/latency.py`` ``main`` writes ``{"avg_latency": float, "latencies": [s, ...],
  "percentiles": {"10": s, "25": s, "50": s, "75": s, "90": s, "99": s}}`` (json.dump turns the int
  percentile keys into strings).
* ``vllm/benchmarks/serve.py`` ``main_async`` writes ``result_json`` = run metadata (``date``,
  ``backend``, ``model_id``, ``num_prompts``, ``max_concurrency``, ...) merged with ``benchmark()``'s
  result: ``completed``, ``failed``, ``mean_/median_/std_/pNN_{ttft,tpot,itl,e2el}_ms`` and, with
  ``--save-detailed`` only, ``ttfts`` (s per request), ``itls`` (list of s per request),
  ``output_lens``, ``input_lens``, ``errors``, ...
"""
from __future__ import annotations

import json
import statistics
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vpatch.validation.config import ValidateConfig
from vpatch.validation.runners.process import (
    RunnerError,
    Server,
    free_port,
    group_cpu_seconds,
    merged_env,
    run_logged,
)

VLLM_MAIN = ("-m", "vllm.entrypoints.cli.main")
PERCENTILES = "50,90,99"


def vllm_cmd(python: str | Path) -> list[str]:
    """The ``vllm`` CLI of the interpreter ``python`` (works without the console script on PATH)."""
    return [str(python), *VLLM_MAIN]


# --- environment and gates ------------------------------------------------------------------------

def gate_env(gate: Mapping[str, str], state: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an entry whose gate is ``gate`` (e.g. ``{"VLLM_MOE_HIP_MEGAKERNEL": "1"}``).

    ``state`` "on": the gate's variables set to their values; "off": those variables removed (the
    default path, even if ``base`` sets them); "none": ``base`` unchanged.  ``base`` defaults to
    this process's environment.
    """
    env = dict(base if base is not None else merged_env())
    if state == "on":
        if not gate:
            raise RunnerError("gate 'on' asked for an entry without a gate")
        env.update({k: str(v) for k, v in gate.items()})
    elif state == "off":
        for k in gate:
            env.pop(k, None)
    elif state != "none":
        raise RunnerError(f"gate state {state!r} is not on, off or none")
    return env


def gate_states(gate: Mapping[str, str], base: Mapping[str, str] | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(state, env)``: ("off", ...) then ("on", ...) for a gated entry, else ("none", base)."""
    if gate:
        yield "off", gate_env(gate, "off", base)
        yield "on", gate_env(gate, "on", base)
    else:
        yield "none", gate_env({}, "none", base)


def measurement_env(cfg: ValidateConfig, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ + the config's ``env`` + ``extra`` (e.g. a gate's env from :func:`gate_env`)."""
    return {**merged_env(cfg.env), **(extra or {})}


def _check_graph_mode(cfg: ValidateConfig) -> None:
    if cfg.device == "cpu":  # vLLM's CPU engine has no graphs to replay; eager boots in a fraction of the time
        return
    if any(a == "--enforce-eager" or a.startswith("--enforce-eager=") or a == "-O0" for a in cfg.extra_args):
        raise RunnerError(
            "[validate] extra_args forces eager execution (--enforce-eager / -O0)",
            "remove it: decode latency must be measured with CUDA/HIP graphs (eager spreads ~15 % run to run)",
        )


# --- argv -----------------------------------------------------------------------------------------

def engine_args(cfg: ValidateConfig, *, gpu_memory_utilization: float | None = None, model_flag: bool = True) -> list[str]:
    """vLLM engine arguments shared by ``serve`` and ``bench latency``.

    ``gpu_memory_utilization`` None: derived from ``[validate] gpu_memory_gb`` and the device's total
    (read here, on the measuring machine), or left to vLLM when no ``gpu_memory_gb`` is set.
    """
    _check_graph_mode(cfg)
    if gpu_memory_utilization is None:
        gpu_memory_utilization = cfg.gpu_memory_utilization()
    argv = ["--model", cfg.model] if model_flag else []
    argv += ["--max-model-len", str(cfg.max_model_len), "--seed", str(cfg.seed)]
    if cfg.tokenizer:
        argv += ["--tokenizer", cfg.tokenizer]
    if cfg.trust_remote_code:
        argv.append("--trust-remote-code")
    if cfg.dtype:
        argv += ["--dtype", cfg.dtype]
    if gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{gpu_memory_utilization:.4f}"]
    return argv + list(cfg.extra_args)


def latency_argv(cfg: ValidateConfig, *, output_len: int, output_json: Path,
                 gpu_memory_utilization: float | None = None) -> list[str]:
    """``vllm bench latency`` arguments (after ``vllm``) for batch 1 at ``output_len``."""
    return ["bench", "latency",
            "--input-len", str(cfg.input_len), "--output-len", str(output_len), "--batch-size", "1",
            "--num-iters-warmup", str(cfg.num_iters_warmup), "--num-iters", str(cfg.num_iters),
            "--output-json", str(output_json),
            *engine_args(cfg, gpu_memory_utilization=gpu_memory_utilization)]


def serve_argv(cfg: ValidateConfig, *, port: int, host: str = "127.0.0.1",
               gpu_memory_utilization: float | None = None) -> list[str]:
    """``vllm serve`` arguments (after ``vllm``): the model positional, bound to ``host:port``."""
    return ["serve", cfg.model, "--host", host, "--port", str(port),
            *engine_args(cfg, gpu_memory_utilization=gpu_memory_utilization, model_flag=False)]


def bench_serve_argv(cfg: ValidateConfig, *, base_url: str, result_dir: Path, result_filename: str,
                     model: str | None = None, tokenizer: str | None = None, num_warmups: int = 2,
                     seed: int | None = None) -> list[str]:
    """``vllm bench serve`` arguments (after ``vllm``): one client, random prompts of fixed lengths."""
    argv = ["bench", "serve",
            "--backend", "vllm", "--base-url", base_url, "--endpoint", "/v1/completions",
            "--model", model or cfg.model,
            "--dataset-name", "random", "--random-input-len", str(cfg.input_len),
            "--random-output-len", str(cfg.output_len), "--random-range-ratio", "0.0",
            "--num-prompts", str(cfg.num_prompts), "--max-concurrency", "1", "--request-rate", "inf",
            "--ignore-eos", "--temperature", "0", "--num-warmups", str(num_warmups),
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", PERCENTILES,
            "--seed", str(cfg.seed if seed is None else seed), "--disable-tqdm",
            "--save-result", "--save-detailed", "--result-dir", str(result_dir), "--result-filename", result_filename]
    tok = tokenizer or cfg.tokenizer
    if tok:
        argv += ["--tokenizer", tok]
    if cfg.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv


# --- result layouts -------------------------------------------------------------------------------

@dataclass
class LatencyResult:
    """``vllm bench latency --output-json``: per-iteration end-to-end latencies of one batch (seconds)."""

    latencies_s: list[float]
    avg_latency_s: float
    percentiles_s: dict[int, float]
    path: Path | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.latencies_s)


def _load_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunnerError(f"{what} wrote no result file {path}") from None
    except ValueError as e:
        raise RunnerError(f"{path}: {what} result is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RunnerError(f"{path}: {what} result is not a JSON object")
    return doc


def _num(doc: dict, key: str, path: Path, what: str) -> float:
    v = doc.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise RunnerError(f"{path}: {what} result has no number {key!r} (keys: {', '.join(sorted(doc)[:30])})",
                          "is this vLLM v0.28.0's layout? the runner parses that one")
    return float(v)


def read_latency_json(path: Path) -> LatencyResult:
    doc = _load_json(path, "vllm bench latency")
    lat = doc.get("latencies")
    if not isinstance(lat, list) or not lat or not all(isinstance(x, (int, float)) for x in lat):
        raise RunnerError(f"{path}: vllm bench latency result has no 'latencies' list of seconds")
    pct = doc.get("percentiles") or {}
    if not isinstance(pct, dict):
        raise RunnerError(f"{path}: 'percentiles' is not an object")
    return LatencyResult([float(x) for x in lat], _num(doc, "avg_latency", path, "vllm bench latency"),
                         {int(float(k)): float(v) for k, v in pct.items()}, Path(path))


@dataclass
class ServeResult:
    """One ``vllm bench serve --save-result --save-detailed`` run."""

    median_tpot_ms: float
    median_ttft_ms: float
    median_itl_ms: float
    mean_tpot_ms: float
    mean_ttft_ms: float
    median_e2el_ms: float | None
    completed: int
    failed: int
    ttfts_s: list[float]
    itls_s: list[list[float]]
    output_lens: list[int]
    path: Path | None = None
    raw: dict = field(default_factory=dict, repr=False)
    server_cpu_s: float | None = None  # CPU seconds the server's process group used during this run

    def metrics(self, tpot_from: str = "median_tpot") -> dict[str, float]:
        """The per-run samples vpatch stores: metric -> value (ms).

        ``tpot_from`` "e2el": TPOT is the requests' median end-to-end latency over their output length.
        On a CPU engine whose API server is starved, tokens reach the client in bursts, so each request's
        TTFT and TPOT trade time (one boot read median TPOT 4.3 / 0.0 / 21.5 ms) while its e2el stays
        within ~0.4 % (README, "The CPU engine"); the price is that prefill time counts in.
        ``tpot_from`` "cpu_time": the CPU milliseconds the server's processes used during the run per generated
        token (warm-up requests and prefill included). On a machine crowded by other jobs wall-clock latencies
        spread 20x (9-199 ms in one night's boots at load 10-16) while the work done per token does not."""
        tpot = self.median_tpot_ms
        if tpot_from == "cpu_time":
            tokens = sum(self.output_lens)
            if self.server_cpu_s is None or not tokens:
                raise RunnerError(f"{self.path}: the server's CPU time was not read (no /proc?) or no tokens came back",
                                  "use tpot_from = \"e2el\" or \"median_tpot\" on this machine")
            tpot = 1000.0 * self.server_cpu_s / tokens
        elif tpot_from == "e2el":
            if self.median_e2el_ms is None or not self.output_lens:
                raise RunnerError(f"{self.path}: no median_e2el_ms / output_lens to derive TPOT from",
                                  "run vllm bench serve with --percentile-metrics including e2el and --save-detailed")
            tpot = self.median_e2el_ms / statistics.median(self.output_lens)
        return {"tpot": tpot, "ttft": self.median_ttft_ms, "itl": self.median_itl_ms}


def read_serve_json(path: Path, *, expect_output_len: int | None = None) -> ServeResult:
    what = "vllm bench serve"
    doc = _load_json(path, what)
    completed = int(_num(doc, "completed", path, what))
    failed = int(doc.get("failed") or 0)
    errors = [e for e in (doc.get("errors") or []) if e]
    if completed == 0 or failed:
        first = f": {str(errors[0]).strip().splitlines()[-1]}" if errors else ""
        raise RunnerError(f"{path}: {failed} of {completed + failed} requests failed{first}",
                          "see the server log beside it")
    ttfts = doc.get("ttfts")
    itls = doc.get("itls")
    if ttfts is None or itls is None:
        raise RunnerError(f"{path}: no per-request 'ttfts'/'itls' lists", "run vllm bench serve with --save-detailed")
    out_lens = [int(x) for x in (doc.get("output_lens") or [])]
    if expect_output_len is not None and out_lens and any(n != expect_output_len for n in out_lens):
        raise RunnerError(f"{path}: requests produced {sorted(set(out_lens))} tokens, not {expect_output_len}",
                          "the server stopped early: is --ignore-eos honoured?")
    return ServeResult(
        median_tpot_ms=_num(doc, "median_tpot_ms", path, what), median_ttft_ms=_num(doc, "median_ttft_ms", path, what),
        median_itl_ms=_num(doc, "median_itl_ms", path, what), mean_tpot_ms=_num(doc, "mean_tpot_ms", path, what),
        mean_ttft_ms=_num(doc, "mean_ttft_ms", path, what),
        median_e2el_ms=_num(doc, "median_e2el_ms", path, what) if "median_e2el_ms" in doc else None,
        completed=completed, failed=failed,
        ttfts_s=[float(x) for x in ttfts], itls_s=[[float(y) for y in x] for x in itls], output_lens=out_lens,
        path=Path(path), raw=doc,
    )


# --- bench latency pairs --------------------------------------------------------------------------

def tpot_from_latencies(lat1_s: float, latL_s: float, output_len: int) -> float:
    """TPOT in ms from the latency at output 1 and at output L (seconds)."""
    if output_len < 2:
        raise RunnerError("TPOT needs an output length of at least 2")
    return (latL_s - lat1_s) / (output_len - 1) * 1000.0


@dataclass
class LatencyPair:
    boot_id: str
    ttft_ms: float
    tpot_ms: float
    at_1: LatencyResult
    at_L: LatencyResult

    def metrics(self) -> dict[str, float]:
        return {"tpot": self.tpot_ms, "ttft": self.ttft_ms}


def measure_latency_pairs(python: str | Path, cfg: ValidateConfig, workdir: Path, *, pairs: int = 1,
                          env: Mapping[str, str] | None = None, gpu_memory_utilization: float | None = None,
                          timeout_s: float | None = None, vllm: Sequence[str] | None = None) -> list[LatencyPair]:
    """Run ``pairs`` interleaved (output 1, output L) ``vllm bench latency`` pairs; one boot each.

    ``vllm``: the command prefix (default :func:`vllm_cmd` of ``python``).
    """
    vllm = list(vllm or vllm_cmd(python))
    full_env = measurement_env(cfg, env)
    timeout = timeout_s if timeout_s is not None else cfg.readiness_timeout_s + 1800
    out: list[LatencyPair] = []
    for i in range(pairs):
        res = {}
        for n in (1, cfg.output_len):
            d = Path(workdir) / f"pair{i:03d}-out{n}"
            d.mkdir(parents=True, exist_ok=True)
            js = d / "latency.json"
            run_logged(vllm + latency_argv(cfg, output_len=n, output_json=js,
                                           gpu_memory_utilization=gpu_memory_utilization),
                       log=d / "bench.log", env=full_env, timeout=timeout, what=f"vllm bench latency (output {n})")
            res[n] = read_latency_json(js)
        r1, rL = res[1], res[cfg.output_len]
        out.append(LatencyPair(uuid.uuid4().hex, r1.median_s * 1000.0,
                               tpot_from_latencies(r1.median_s, rL.median_s, cfg.output_len), r1, rL))
    return out


# --- serve + bench serve --------------------------------------------------------------------------

@dataclass
class BootResult:
    boot_id: str
    ready_s: float
    runs: list[ServeResult]
    server_log: Path

    def samples(self, metric: str, tpot_from: str = "median_tpot") -> list[float]:
        return [r.metrics(tpot_from)[metric] for r in self.runs]


def start_server(python: str | Path, cfg: ValidateConfig, workdir: Path, *, env: Mapping[str, str] | None = None,
                 port: int | None = None, gpu_memory_utilization: float | None = None,
                 server_argv: Sequence[str] | None = None) -> Server:
    """A :class:`Server` for ``vllm serve`` (not started; use ``with``).  ``server_argv`` replaces the
    command (tests use the oracle server); it must listen on the ``port`` given."""
    port = port or cfg.port or free_port()
    argv = list(server_argv) if server_argv is not None else vllm_cmd(python) + serve_argv(
        cfg, port=port, gpu_memory_utilization=gpu_memory_utilization)
    return Server(argv, port=port, log=Path(workdir) / "server.log", env=measurement_env(cfg, env),
                  readiness_timeout_s=cfg.readiness_timeout_s, poll_interval_s=1.0 if server_argv is None else 0.2)


def run_bench_serve(python: str | Path, cfg: ValidateConfig, base_url: str, workdir: Path, *, run_index: int = 0,
                    env: Mapping[str, str] | None = None, model: str | None = None, tokenizer: str | None = None,
                    timeout_s: float = 3600, num_warmups: int = 2) -> ServeResult:
    """One ``vllm bench serve`` run against a ready server; returns its parsed result."""
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    name = f"run{run_index:03d}.json"
    argv = vllm_cmd(python) + bench_serve_argv(cfg, base_url=base_url, result_dir=d, result_filename=name,
                                              model=model, tokenizer=tokenizer, num_warmups=num_warmups,
                                              seed=cfg.seed + run_index)
    run_logged(argv, log=d / f"run{run_index:03d}.log", env=measurement_env(cfg, env), timeout=timeout_s,
               what="vllm bench serve")
    return read_serve_json(d / name, expect_output_len=cfg.output_len)


def measure_serve_boot(python: str | Path, cfg: ValidateConfig, workdir: Path, *, runs: int | None = None,
                       env: Mapping[str, str] | None = None, gpu_memory_utilization: float | None = None,
                       server_argv: Sequence[str] | None = None, port: int | None = None,
                       model: str | None = None, tokenizer: str | None = None,
                       client_python: str | Path | None = None,
                       during: Sequence[Callable[[str], None]] = ()) -> BootResult:
    """One boot: start the server, run ``bench serve`` ``runs`` times (default ``cfg.runs_per_boot``), stop it.

    ``env`` (e.g. a gate's) goes to the server; the client gets the config's env only.
    ``client_python``: the interpreter for ``vllm bench serve`` (default ``python``).
    ``during``: callables given the server's base URL after the bench runs, before it stops (other
    measurements that share the boot: outputs, gsm8k).
    """
    boot_id = uuid.uuid4().hex
    workdir = Path(workdir) / f"boot-{boot_id[:12]}"
    srv = start_server(python, cfg, workdir, env=env, port=port, gpu_memory_utilization=gpu_memory_utilization,
                       server_argv=server_argv)
    results = []
    with srv:
        for i in range(runs or cfg.runs_per_boot):
            cpu0 = group_cpu_seconds(srv.proc.pid) if srv.proc else None
            r = run_bench_serve(client_python or python, cfg, srv.base_url, workdir, run_index=i,
                                model=model, tokenizer=tokenizer)
            cpu1 = group_cpu_seconds(srv.proc.pid) if srv.proc else None
            r.server_cpu_s = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
            results.append(r)
        for f in during:
            f(srv.base_url)
    return BootResult(boot_id, srv.ready_after_s or 0.0, results, srv.log)
