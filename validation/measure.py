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

import os
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

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


def tree_env(tree: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


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

    def boot(self, tree: Path, env: Mapping[str, str] | None = None, runs: int | None = None) -> list[float]:
        """One server start (the replication unit), ``runs`` ``vllm bench serve`` runs against it."""
        from .runners.latency import measure_serve_boot

        with tempfile.TemporaryDirectory(prefix="vpatch-latency-") as tmp:
            boot = measure_serve_boot(self.python, self.cfg, Path(tmp), runs=runs or self.cfg.runs_per_boot,
                                      env=tree_env(tree, env))
        return [r.metrics()[self.metric] for r in boot.runs]


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

    def items(self, tree: Path, env: Mapping[str, str] | None = None) -> dict[str, dict[int, bool]]:
        """One lm-eval run: {filter: {question index: correct}} (also sets ``last`` with the summary)."""
        from .runners.accuracy import run_gsm8k

        backend = self.cfg.gsm8k.backend
        with tempfile.TemporaryDirectory(prefix="vpatch-gsm8k-") as tmp:
            work = Path(tmp)
            if backend != "local-completions":
                res = run_gsm8k(work / "run", self.cfg, python=self.python, env=tree_env(tree, env))
            else:
                port = self.cfg.port or free_port()
                if self.serve:
                    argv = split_command(self.serve, {"python": self.python, "tree": str(tree), "port": str(port)})
                else:
                    from .runners.latency import serve_argv, vllm_cmd

                    argv = [*vllm_cmd(self.python), *serve_argv(self.cfg, port=port)]
                with Server(argv, port, work / "server.log", env=tree_env(tree, env), cwd=tree,
                            readiness_timeout_s=self.cfg.readiness_timeout_s, health_path=self.health_path) as srv:
                    res = run_gsm8k(work / "run", self.cfg, backend="local-completions", base_url=srv.base_url,
                                    python=sys.executable)
        self.last = {f: {"exact_match": r.exact_match, "stderr": r.stderr, "n": r.n} for f, r in res.filters.items()}
        return res.items


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
    if name.startswith("kernel:"):
        for e in (series.entries if series else ()):
            if e.bench and any(c.metric == name for c in e.claims):
                cmd = e.bench.replace("{series_dir}", str(series.path.resolve().parent))
                return KernelMeasurer(name, cmd, py)
        raise MeasureError(f"no entry declares a benchmark for {name}",
                           "give the entry a `bench` command and a claim on that metric in series.toml")
    known = ["tpot", "ttft", "gsm8k", "kernel:NAME", *mcfg.metrics]
    raise MeasureError(f"unknown metric {name!r}", f"known: {', '.join(known)} (custom ones go in [measure.metrics.NAME] of vpatch.toml)")
