"""Measurers: how one *boot* of one metric is taken on one prefix's tree (effects live here).

A boot is one process start (a server, a benchmark job): the unit of replication. Each measurer
returns the runs of one boot (``boot``) or, for accuracy, per-question correctness (``items``).

- :class:`CommandMeasurer` — any command printing a number (``vpatch bisect --run CMD``, custom metrics
  from ``[measure.metrics.NAME]`` in vpatch.toml); one boot = ``runs`` invocations.
- :class:`LatencyMeasurer` — decode TPOT / TTFT: one boot = one ``vllm serve`` start with
  ``runs`` ``vllm bench serve`` runs against it (max-concurrency 1), in the build's python.
- :class:`Gsm8kMeasurer` — gsm8k through lm-eval against a server started in the tree (``[measure] serve``,
  default ``vllm serve``), from local data files.
- :class:`KernelMeasurer` — an entry's micro-benchmark command (JSON samples per kernel and shape).

Commands get ``{python}``, ``{tree}``, ``{port}`` placeholders, run with ``cwd=tree`` and ``tree`` first on
``PYTHONPATH`` (a python-only change takes effect without reinstalling anything).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vpatch.manager.errors import VpatchError

from .config import ValidateConfig, load_validate_config
from .runners.command import run_command
from .runners.process import Server, free_port, split_command


class MeasureError(VpatchError):
    pass


class MetricDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    command: str
    unit: str = ""
    lower_is_better: bool = True
    runs_per_boot: int = Field(default=3, ge=1)


class MeasureConfig(BaseModel):
    """``[measure]`` of vpatch.toml: where runs execute, and custom metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    python: str | None = None       # interpreter for measured processes (default: this one)
    serve: str | None = None        # server for gsm8k via local-completions (default: vllm serve)
    health_path: str = "/health"
    timeout_s: float = 3600
    metrics: dict[str, MetricDef] = Field(default_factory=dict)


def load_configs(path: Path | None) -> tuple[ValidateConfig, MeasureConfig]:
    if path is None or not Path(path).exists():
        return ValidateConfig(), MeasureConfig()
    vcfg = load_validate_config(path)
    try:
        raw = tomllib.loads(Path(path).read_text()).get("measure", {})
        mcfg = MeasureConfig.model_validate(raw)
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise MeasureError(f"{path}: [measure]: {e}".splitlines()[0] + (" " + str(e).splitlines()[1] if "\n" in str(e) else "")) from None
    return vcfg, mcfg


def is_runtime(tree: Path) -> bool:
    """A materialized prefix is a source tree (python-only: put on PYTHONPATH) or, for the cpu target, a
    runnable venv of its own (``vpatch build --target cpu``): the venv's python runs it, nothing prepended."""
    return (Path(tree) / "pyvenv.cfg").is_file()


def python_for(tree: Path, default: str) -> str:
    return str(Path(tree) / "bin" / "python") if is_runtime(tree) else default


def tree_env(tree: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if is_runtime(tree):
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
    else:
        env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def _share_key(tree: Path, env: Mapping[str, str] | None) -> str:
    return str(tree) + "\0" + json.dumps(dict(env or {}), sort_keys=True)


@dataclass
class BootShare:
    """Measurements that share one server boot (the cpu target, where a boot costs minutes): the runs of a
    latency boot give both TPOT and TTFT, and passengers (outputs, gsm8k) ask the same server before it
    stops. Keyed by the materialized path, so only for materializers that give each tree its own path."""

    metrics: tuple[str, ...] = ("tpot", "ttft")
    pending: dict = field(default_factory=dict)      # (key, metric) -> [boot values, ...]
    passengers: list = field(default_factory=list)   # objects with ride(key, tree, base_url)

    def take(self, key: str, metric: str) -> tuple[list[float], dict] | None:
        q = self.pending.get((key, metric))
        return q.pop(0) if q else None

    def put(self, key: str, values_by_metric: Mapping[str, list[float]], measured: str, info: dict) -> None:
        for metric, values in values_by_metric.items():
            if metric != measured and metric in self.metrics:
                self.pending.setdefault((key, metric), []).append((values, info))


class Measurer(Protocol):
    metric: str
    unit: str
    lower_is_better: bool
    kind: str  # "samples" | "items"

    def config_content(self) -> dict: ...


@dataclass
class CommandMeasurer:
    metric: str
    command: str
    unit: str = ""
    lower_is_better: bool = True
    runs_per_boot: int = 3
    python: str = sys.executable
    timeout_s: float = 3600
    kind: str = "samples"

    def config_content(self) -> dict:
        return {"kind": "command", "metric": self.metric, "command": self.command, "runs": self.runs_per_boot}

    def boot(self, tree: Path, env: Mapping[str, str] | None = None, runs: int | None = None) -> list[float]:
        out = run_command(self.command, runs or self.runs_per_boot, env=tree_env(tree, env), cwd=tree,
                          timeout_s=self.timeout_s, placeholders={"python": self.python, "tree": str(tree)})
        return [r.value for r in out]


@dataclass
class KernelMeasurer:
    metric: str  # kernel:NAME or kernel:NAME:SHAPE
    command: str
    python: str = sys.executable
    unit: str = "us"
    lower_is_better: bool = True
    kind: str = "samples"

    def config_content(self) -> dict:
        return {"kind": "kernel", "command": self.command}

    def boot(self, tree: Path, env: Mapping[str, str] | None = None, runs: int | None = None) -> list[float]:
        from .runners.kernel import run_kernel_bench

        [run] = run_kernel_bench(self.command, env=tree_env(tree, env), cwd=tree,
                                 placeholders={"python": self.python, "tree": str(tree)})
        by = run.by_metric()
        want = self.metric
        for name, series in by.items():
            if name == want or name.startswith(want + "["):
                self.unit = series.unit
                return list(series.samples)
        raise MeasureError(f"the benchmark printed no {want} (it printed {', '.join(by) or 'nothing'})")


@dataclass
class LatencyMeasurer:
    metric: str  # tpot | ttft
    cfg: ValidateConfig
    python: str = sys.executable
    unit: str = "ms"
    lower_is_better: bool = True
    kind: str = "samples"

    def config_content(self) -> dict:
        return {"kind": "latency", **self.cfg.canonical("latency")}

    share: BootShare | None = None
    last_boot: dict = field(default_factory=dict)
    reused_boot: bool = False  # the last values came from a boot another metric started (no new boot)

    def boot(self, tree: Path, env: Mapping[str, str] | None = None, runs: int | None = None) -> list[float]:
        """One server start (the replication unit), ``runs`` ``vllm bench serve`` runs against it."""
        from .runners.latency import measure_serve_boot

        key = _share_key(tree, env)
        if self.share is not None:
            got = self.share.take(key, self.metric)
            self.reused_boot = got is not None
            if got is not None:
                self.last_boot = got[1]
                return got[0]
        during = [lambda url, p=p: p.ride(key, tree, url) for p in (self.share.passengers if self.share else ())]
        with tempfile.TemporaryDirectory(prefix="vpatch-latency-") as tmp:
            boot = measure_serve_boot(python_for(tree, self.python), self.cfg, Path(tmp),
                                      runs=runs or self.cfg.runs_per_boot, env=tree_env(tree, env), during=during)
        self.last_boot = {"ready_s": round(boot.ready_s, 2), "server_boot": boot.boot_id}
        if self.share is not None:
            self.share.put(key, {m: boot.samples(m, self.cfg.tpot_from) for m in ("tpot", "ttft")}, self.metric,
                           self.last_boot)
        return boot.samples(self.metric, self.cfg.tpot_from)


@dataclass
class Gsm8kMeasurer:
    cfg: ValidateConfig
    serve: str | None = None
    python: str = sys.executable
    health_path: str = "/health"
    metric: str = "gsm8k"
    unit: str = "%"
    lower_is_better: bool = False
    kind: str = "items"
    filter_name: str = "flexible-extract"
    last: dict = field(default_factory=dict)

    def config_content(self) -> dict:
        return {"kind": "gsm8k", "serve": self.serve, **self.cfg.canonical("accuracy")}

    pending: dict = field(default_factory=dict)
    ridden: set = field(default_factory=set)
    reused_boot: bool = False

    def _run(self, url: str):
        from .runners.accuracy import run_gsm8k

        with tempfile.TemporaryDirectory(prefix="vpatch-gsm8k-") as tmp:
            return run_gsm8k(Path(tmp) / "run", self.cfg, backend="local-completions", base_url=url,
                             python=sys.executable)

    def ride(self, key: str, tree: Path, base_url: str) -> None:
        """Run gsm8k against a server another measurement booted (once per tree)."""
        if key not in self.ridden:
            self.ridden.add(key)
            self.pending[key] = self._run(base_url)

    def items(self, tree: Path, env: Mapping[str, str] | None = None) -> dict[str, dict[int, bool]]:
        """One lm-eval run: {filter: {question index: correct}} (also sets ``last`` with the summary)."""
        from .runners.accuracy import run_gsm8k

        res = self.pending.pop(_share_key(tree, env), None)
        self.reused_boot = res is not None
        if res is not None:
            self.last = {f: {"exact_match": r.exact_match, "stderr": r.stderr, "n": r.n} for f, r in res.filters.items()}
            return res.items
        backend = self.cfg.gsm8k.backend
        with tempfile.TemporaryDirectory(prefix="vpatch-gsm8k-") as tmp:
            work = Path(tmp)
            if backend != "local-completions":
                res = run_gsm8k(work / "run", self.cfg, python=self.python, env=tree_env(tree, env))
            else:
                port = self.cfg.port or free_port()
                py = python_for(tree, self.python)
                if self.serve:
                    argv = split_command(self.serve, {"python": py, "tree": str(tree), "port": str(port)})
                else:
                    from .runners.latency import serve_argv, vllm_cmd

                    argv = [*vllm_cmd(py), *serve_argv(self.cfg, port=port)]
                with Server(argv, port, work / "server.log", env={**tree_env(tree, env), **self.cfg.env}, cwd=tree,
                            readiness_timeout_s=self.cfg.readiness_timeout_s, health_path=self.health_path) as srv:
                    res = run_gsm8k(work / "run", self.cfg, backend="local-completions", base_url=srv.base_url,
                                    python=sys.executable)
        self.last = {f: {"exact_match": r.exact_match, "stderr": r.stderr, "n": r.n} for f, r in res.filters.items()}
        return res.items


@dataclass
class OutputsMeasurer:
    """Greedy token ids and top logprobs of a fixed prompt set (validation/runners/outputs.py), one boot."""

    cfg: ValidateConfig
    python: str = sys.executable
    metric: str = "outputs"
    unit: str = "tokens"
    lower_is_better: bool = True
    kind: str = "outputs"
    pending: dict = field(default_factory=dict)
    ridden: set = field(default_factory=set)
    reused_boot: bool = False

    def config_content(self) -> dict:
        from .runners.outputs import MAX_TOKENS, PROMPTS, TOP_LOGPROBS

        c = self.cfg.canonical("latency")
        keep = ("model", "tokenizer", "dtype", "max_model_len", "extra_args", "env", "trust_remote_code")
        return {"kind": "outputs", **{k: c[k] for k in keep if k in c}, "prompts": list(PROMPTS),
                "max_tokens": MAX_TOKENS, "top_logprobs": TOP_LOGPROBS}

    def _fetch(self, url: str) -> list[dict]:
        from .runners.outputs import fetch_outputs

        return fetch_outputs(url, self.cfg.model)

    def ride(self, key: str, tree: Path, base_url: str) -> None:
        if key not in self.ridden:
            self.ridden.add(key)
            self.pending[key] = self._fetch(base_url)

    def outputs(self, tree: Path, env: Mapping[str, str] | None = None) -> list[dict]:
        got = self.pending.pop(_share_key(tree, env), None)
        self.reused_boot = got is not None
        if got is not None:
            return got
        from .runners.latency import start_server

        with tempfile.TemporaryDirectory(prefix="vpatch-outputs-") as tmp, \
                start_server(python_for(tree, self.python), self.cfg, Path(tmp), env=tree_env(tree, env)) as srv:
            return self._fetch(srv.base_url)


def make_measurer(name: str, vcfg: ValidateConfig, mcfg: MeasureConfig, *, series=None, python: str | None = None):
    """The measurer for metric ``name`` (tpot, ttft, gsm8k, kernel:NAME, or a [measure.metrics] name)."""
    py = python or mcfg.python or sys.executable
    if name in mcfg.metrics:
        d = mcfg.metrics[name]
        return CommandMeasurer(name, d.command, d.unit, d.lower_is_better, d.runs_per_boot, py, mcfg.timeout_s)
    if name in ("tpot", "ttft"):
        return LatencyMeasurer(name, vcfg, py)
    if name == "gsm8k":
        return Gsm8kMeasurer(vcfg, mcfg.serve, py, mcfg.health_path)
    if name == "outputs":
        return OutputsMeasurer(vcfg, py)
    if name.startswith("kernel:"):
        for e in (series.entries if series else ()):
            if e.bench and any(c.metric == name for c in e.claims):
                cmd = e.bench.replace("{series_dir}", str(series.path.resolve().parent))
                return KernelMeasurer(name, cmd, py)
        raise MeasureError(f"no entry declares a benchmark for {name}",
                           "give the entry a `bench` command and a claim on that metric in series.toml")
    known = ["tpot", "ttft", "gsm8k", "outputs", "kernel:NAME", *mcfg.metrics]
    raise MeasureError(f"unknown metric {name!r}", f"known: {', '.join(known)} (custom ones go in [measure.metrics.NAME] of vpatch.toml)")
