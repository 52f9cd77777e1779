"""Kernel micro-benchmarks: run an entry's ``bench`` command, read the JSON samples it prints.

The format (one JSON object per line on stdout; other lines, e.g. logs, are ignored; a single JSON
array of such objects, or ``{"results": [...]}``, is accepted too)::

    {"kernel": "moe_gemv_int4", "shape": {"m": 1, "n": 2048, "k": 768}, "unit": "us",
     "samples": [12.31, 12.29, 12.35, ...]}

* ``kernel``: a name (letters, digits, ``_ . -``); ``shape``: an object of integer dimensions, a
  string such as ``"1x2048x768"``, or absent; ``unit``: one of ``ns``, ``us``, ``ms``, ``s`` (times:
  lower is better) or ``GB/s``, ``TFLOPS``, ``GFLOPS`` (rates: higher is better); ``samples``: at least
  one finite positive number, one per timed iteration (e.g. 200).
* Each (kernel, shape) appears once per run.

A run of the command is one process, hence one boot.  The store's metric name is
``kernel:<kernel>[<shape>]`` (see :meth:`KernelSeries.metric`), so every shape is its own series and
a claim's ``kernel:<kernel>`` matches all its shapes by prefix.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vpatch.validation.runners.process import RunnerError, split_command

UNITS = {"ns": "lower", "us": "lower", "ms": "lower", "s": "lower", "GB/s": "higher", "TFLOPS": "higher",
         "GFLOPS": "higher"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class KernelFormatError(RunnerError):
    """A kernel benchmark printed something that is not the sample format."""


@dataclass(frozen=True)
class KernelSeries:
    kernel: str
    shape: str  # canonical: "k=768,m=1,n=2048" (sorted) for objects, the string as given otherwise, "" if none
    unit: str
    samples: tuple[float, ...]

    @property
    def metric(self) -> str:
        return f"kernel:{self.kernel}[{self.shape}]" if self.shape else f"kernel:{self.kernel}"

    @property
    def direction(self) -> str:
        return UNITS[self.unit]


@dataclass(frozen=True)
class KernelRun:
    boot_id: str
    series: tuple[KernelSeries, ...]
    wall_s: float

    def by_metric(self) -> dict[str, KernelSeries]:
        return {s.metric: s for s in self.series}


def _shape_key(shape: object, where: str) -> str:
    if shape is None:
        return ""
    if isinstance(shape, str):
        if not shape or not re.match(r"^[A-Za-z0-9_.,=x:\-]{1,128}$", shape):
            raise KernelFormatError(f"{where}: shape {shape!r} must be a short string like '1x2048x768'")
        return shape
    if isinstance(shape, dict):
        if not shape:
            raise KernelFormatError(f"{where}: shape is an empty object")
        parts = []
        for k in sorted(shape):
            v = shape[k]
            if not isinstance(k, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise KernelFormatError(f"{where}: shape dimension name {k!r} is not an identifier")
            if isinstance(v, bool) or not isinstance(v, int):
                raise KernelFormatError(f"{where}: shape dimension {k} = {v!r} is not an integer")
            parts.append(f"{k}={v}")
        return ",".join(parts)
    if isinstance(shape, list) and shape and all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        return "x".join(str(v) for v in shape)
    raise KernelFormatError(f"{where}: shape must be an object of integers, a list of integers or a string, not {shape!r}")


def _one(obj: object, where: str) -> KernelSeries:
    if not isinstance(obj, dict):
        raise KernelFormatError(f"{where}: expected an object with kernel/shape/unit/samples, got {type(obj).__name__}")
    unknown = set(obj) - {"kernel", "shape", "unit", "samples", "note"}
    if unknown:
        raise KernelFormatError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                                "allowed: kernel, shape, unit, samples, note")
    k = obj.get("kernel")
    if not isinstance(k, str) or not NAME_RE.match(k):
        raise KernelFormatError(f"{where}: 'kernel' must be a name (letters, digits, _ . -), got {k!r}")
    unit = obj.get("unit")
    if unit not in UNITS:
        raise KernelFormatError(f"{where}: kernel {k}: 'unit' must be one of {', '.join(UNITS)}, got {unit!r}")
    s = obj.get("samples")
    if not isinstance(s, list) or not s:
        raise KernelFormatError(f"{where}: kernel {k}: 'samples' must be a non-empty list of numbers")
    vals = []
    for i, v in enumerate(s):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise KernelFormatError(f"{where}: kernel {k}: samples[{i}] = {v!r} is not a finite positive number")
        vals.append(float(v))
    return KernelSeries(k, _shape_key(obj.get("shape"), f"{where}: kernel {k}"), unit, tuple(vals))


def parse_kernel_output(text: str, *, source: str = "output") -> list[KernelSeries]:
    """Parse a benchmark's stdout into series; raises :class:`KernelFormatError` naming the line at fault."""
    objs: list[tuple[object, str]] = []
    stripped = text.strip()
    whole = None
    if stripped.startswith("[") or (stripped.startswith("{") and "\n" in stripped and '"results"' in stripped):
        try:
            whole = json.loads(stripped)
        except ValueError:
            whole = None
    if whole is not None:
        items = whole.get("results") if isinstance(whole, dict) else whole
        if not isinstance(items, list):
            raise KernelFormatError(f"{source}: 'results' must be a list")
        objs = [(o, f"{source}: item {i}") for i, o in enumerate(items)]
    else:
        for ln, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s.startswith("{"):
                continue
            try:
                objs.append((json.loads(s), f"{source}:{ln}"))
            except json.JSONDecodeError as e:
                raise KernelFormatError(f"{source}:{ln}: not valid JSON ({e.msg}): {s[:120]}") from None
    if not objs:
        raise KernelFormatError(f"{source}: no JSON samples found",
                                'print one line per kernel and shape: {"kernel": ..., "shape": {...}, "unit": "us", "samples": [...]}')
    out: dict[tuple[str, str], KernelSeries] = {}
    for obj, where in objs:
        ks = _one(obj, where)
        key = (ks.kernel, ks.shape)
        if key in out:
            raise KernelFormatError(f"{where}: kernel {ks.kernel} shape [{ks.shape}] appears twice",
                                    "print each kernel and shape once per run")
        out[key] = ks
    return list(out.values())


def run_kernel_bench(cmd: str | Sequence[str], *, runs: int = 1, env: Mapping[str, str] | None = None,
                     cwd: Path | None = None, placeholders: Mapping[str, str] | None = None,
                     timeout_s: float | None = 3600, log_dir: Path | None = None) -> list[KernelRun]:
    """Run an entry's ``bench`` command ``runs`` times (each a boot); parse and check every run's output.

    ``placeholders``: e.g. ``{"python": build_python, "series_dir": ...}`` for ``{python}`` in the command.
    All runs must report the same (kernel, shape, unit) set.
    """
    argv = split_command(cmd, placeholders)
    out: list[KernelRun] = []
    for i in range(runs):
        t0 = time.monotonic()
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=dict(env) if env is not None else None,
                               cwd=cwd, timeout=timeout_s)
        except FileNotFoundError:
            raise RunnerError(f"`{argv[0]}`: command not found") from None
        except subprocess.TimeoutExpired:
            raise RunnerError(f"kernel benchmark `{' '.join(argv)}` ran past {timeout_s} s") from None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / f"kernel-run{i:03d}.out").write_text(r.stdout)
            (log_dir / f"kernel-run{i:03d}.err").write_text(r.stderr)
        if r.returncode != 0:
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
            raise RunnerError(f"kernel benchmark `{' '.join(argv)}` failed (exit {r.returncode}):\n{tail}")
        series = parse_kernel_output(r.stdout, source=f"`{' '.join(argv)}` run {i + 1}")
        if out:
            want = {(s.kernel, s.shape, s.unit) for s in out[0].series}
            got = {(s.kernel, s.shape, s.unit) for s in series}
            if want != got:
                raise KernelFormatError(
                    f"kernel benchmark run {i + 1} reported a different set of kernels/shapes than run 1: "
                    f"missing {sorted(want - got)}, new {sorted(got - want)}")
        out.append(KernelRun(uuid.uuid4().hex, tuple(series), time.monotonic() - t0))
    return out
