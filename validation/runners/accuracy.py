"""gsm8k through lm-eval 0.4.13, from local files only (never a hub).

How: :func:`write_task` writes a task YAML into a temporary include path that is lm-eval's own
``gsm8k`` task (read from the installed package: same prompt, generation settings, metric and both
filters) with the data swapped for ``dataset_path: json`` over the local ``train.jsonl`` /
``test.jsonl``.  :func:`run_gsm8k` runs ``python -m lm_eval run ... --include_path DIR --log_samples
--output_path OUT`` as a subprocess with ``HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1`` and reads back

* both filters' ``exact_match`` and its stderr from ``results_*.json`` and
* per-question correctness (``doc_id`` = line index in test.jsonl) from ``samples_*.jsonl``,

for the backends ``hf`` (a local model directory), ``local-completions`` (a server on 127.0.0.1:
``vllm serve`` or the test oracle) and ``vllm`` (lm-eval's in-process vLLM; needs lm-eval in the
build's venv).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vpatch.validation.config import Gsm8kConfig, ValidateConfig
from vpatch.validation.runners.process import RunnerError, merged_env, run_logged

TASK_NAME = "vpatch_gsm8k"
FILTERS = ("strict-match", "flexible-extract")
OFFLINE_ENV = {
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class FilterResult:
    exact_match: float
    stderr: float | None
    n: int

    @property
    def value(self) -> float:
        return self.exact_match


@dataclass
class Gsm8kResult:
    filters: dict[str, FilterResult]
    items: dict[str, dict[int, bool]]  # filter -> {question_index: correct}
    results_json: Path
    samples_jsonl: Path
    wall_s: float
    lm_eval_version: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    def accuracy(self, filter_name: str = "flexible-extract") -> float:
        return self.filters[filter_name].exact_match


# --- the task -------------------------------------------------------------------------------------

def _lm_eval_gsm8k_yaml(python: str | Path | None = None) -> Path:
    """The installed lm-eval's ``tasks/gsm8k/gsm8k.yaml`` (in this interpreter, else in ``python``'s)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is not None and spec.origin:
        p = Path(spec.origin).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
        if p.exists():
            return p
    if python is not None:
        r = subprocess.run([str(python), "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
                           capture_output=True, text=True, timeout=120)
        p = Path(r.stdout.strip()) / "tasks" / "gsm8k" / "gsm8k.yaml"
        if r.returncode == 0 and p.exists():
            return p
    raise RunnerError("lm-eval's gsm8k task is not installed", "pip install 'lm-eval[api,hf]==0.4.13'")


def gsm8k_task_config(data_dir: Path, num_fewshot: int, *, python: str | Path | None = None) -> dict:
    """lm-eval's gsm8k task with the data read from ``data_dir``'s train/test JSONL files."""
    import yaml

    data_dir = Path(data_dir).resolve()
    for split in ("train", "test"):
        if not (data_dir / f"{split}.jsonl").is_file():
            raise RunnerError(f"{data_dir / (split + '.jsonl')}: missing", "point [validate.gsm8k] data_dir at GSM8K's folder")
    src = _lm_eval_gsm8k_yaml(python)
    cfg = yaml.safe_load(src.read_text())
    if cfg.get("task") != "gsm8k" or "filter_list" not in cfg:
        raise RunnerError(f"{src}: not the gsm8k task layout this runner knows (lm-eval 0.4.13)")
    cfg.pop("tag", None)
    cfg.pop("dataset_name", None)
    cfg["task"] = TASK_NAME
    cfg["dataset_path"] = "json"
    cfg["dataset_kwargs"] = {"data_files": {"train": str(data_dir / "train.jsonl"), "test": str(data_dir / "test.jsonl")}}
    cfg["num_fewshot"] = num_fewshot
    return cfg


def write_task(include_dir: Path, data_dir: Path, num_fewshot: int = 5, *, python: str | Path | None = None) -> Path:
    import yaml

    include_dir.mkdir(parents=True, exist_ok=True)
    path = include_dir / f"{TASK_NAME}.yaml"
    path.write_text(yaml.safe_dump(gsm8k_task_config(data_dir, num_fewshot, python=python), sort_keys=False))
    return path


# --- the command ----------------------------------------------------------------------------------

def model_args(backend: str, *, cfg: ValidateConfig, model_dir: Path | None = None, base_url: str | None = None,
               served_model: str | None = None, gpu_memory_utilization: float | None = None) -> str:
    """lm-eval's ``--model_args`` for ``backend`` (comma-separated key=value)."""
    g = cfg.gsm8k
    if backend == "hf":
        if model_dir is None:
            raise RunnerError("the hf backend needs a local model directory")
        args = {"pretrained": str(model_dir), "dtype": "float32" if cfg.dtype is None else cfg.dtype,
                "trust_remote_code": cfg.trust_remote_code}
    elif backend == "local-completions":
        if not base_url:
            raise RunnerError("the local-completions backend needs the server's base URL")
        args = {
            "model": served_model or cfg.model,
            "base_url": base_url.rstrip("/") + "/v1/completions",
            # no tokenizer needed for generate_until; "none" keeps lm-eval from fetching one
            "tokenizer_backend": "none",
            "tokenized_requests": False,
            "num_concurrent": g.batch_size,
            "max_retries": 3,
            "timeout": 3600,
            "max_length": cfg.max_model_len,
        }
    elif backend == "vllm":
        args = {"pretrained": str(model_dir) if model_dir else cfg.model, "trust_remote_code": cfg.trust_remote_code,
                "max_model_len": cfg.max_model_len}
        if cfg.dtype:
            args["dtype"] = cfg.dtype
        if gpu_memory_utilization:
            args["gpu_memory_utilization"] = gpu_memory_utilization
    else:
        raise RunnerError(f"unknown lm-eval backend {backend!r}", "use vllm, local-completions or hf")
    for k, v in args.items():
        if isinstance(v, str) and ("," in v or "=" in v):
            raise RunnerError(f"lm-eval model_args value for {k} contains ',' or '=': {v!r}", "use a path without them")
    return ",".join(f"{k}={v}" for k, v in args.items())


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def lm_eval_argv(python: str | Path, *, backend: str, model_args_s: str, include_dir: Path, output_path: Path,
                 g: Gsm8kConfig, seed: int = 0, gen_kwargs: str | None = None) -> list[str]:
    argv = [str(python), "-m", "lm_eval", "run",
            "--model", backend, "--model_args", model_args_s,
            "--tasks", TASK_NAME, "--include_path", str(include_dir),
            "--num_fewshot", str(g.num_fewshot), "--batch_size", str(g.batch_size),
            "--output_path", str(output_path), "--log_samples", "--seed", str(seed),
            "--gen_kwargs", gen_kwargs or f"max_gen_toks={g.max_gen_toks}"]
    if g.limit is not None:
        argv += ["--limit", str(g.limit)]
    if backend == "hf":
        argv += ["--device", "cuda" if _has_gpu() else "cpu"]
    return argv


def run_gsm8k(
    workdir: Path,
    cfg: ValidateConfig,
    *,
    backend: str | None = None,
    python: str | Path | None = None,
    model_dir: Path | None = None,
    base_url: str | None = None,
    served_model: str | None = None,
    env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
    gpu_memory_utilization: float | None = None,
    timeout_s: float | None = None,
) -> Gsm8kResult:
    """Run gsm8k once and read its results.  ``workdir`` gets the task, the outputs and ``lm_eval.log``.

    ``python``: the interpreter with lm-eval (default this one; for ``vllm`` the build's venv).
    ``env``: extra environment (e.g. a gate's variables); the offline variables are always set.
    """
    from vpatch.validation.tinymodel import default_data_dir

    backend = backend or cfg.gsm8k.backend
    python = python or sys.executable
    data_dir = Path(data_dir or cfg.gsm8k.data_dir or default_data_dir())
    workdir = Path(workdir)
    include_dir = workdir / "tasks"
    out = workdir / "out"
    if out.exists() and any(out.rglob("results_*.json")):
        raise RunnerError(f"{out}: already holds lm-eval results", "use a fresh work directory per run")
    write_task(include_dir, data_dir, cfg.gsm8k.num_fewshot, python=python)
    margs = model_args(backend, cfg=cfg, model_dir=model_dir, base_url=base_url, served_model=served_model,
                       gpu_memory_utilization=gpu_memory_utilization)
    argv = lm_eval_argv(python, backend=backend, model_args_s=margs, include_dir=include_dir, output_path=out,
                        g=cfg.gsm8k)
    full_env = merged_env({**OFFLINE_ENV, **cfg.env, **(env or {})})
    full_env.setdefault("HF_DATASETS_CACHE", str(workdir / "hf-datasets-cache"))
    t0 = time.monotonic()
    run_logged(argv, log=workdir / "lm_eval.log", env=full_env, cwd=workdir, timeout=timeout_s, what="lm-eval gsm8k")
    wall = time.monotonic() - t0
    res = read_results(out)
    res.wall_s = wall
    return res


# --- reading --------------------------------------------------------------------------------------

def _newest(paths: list[Path], what: str, where: Path) -> Path:
    if not paths:
        raise RunnerError(f"lm-eval wrote no {what} under {where}", "see lm_eval.log beside it")
    return max(paths, key=lambda p: (p.stat().st_mtime, p.name))


def read_results(output_path: Path, task: str = TASK_NAME) -> Gsm8kResult:
    """Parse lm-eval 0.4.13's ``results_<date>.json`` and ``samples_<task>_<date>.jsonl`` under ``output_path``.

    results: ``{"results": {task: {"exact_match,strict-match": x, "exact_match_stderr,strict-match": s, ...}},
    "n-samples": {task: {"effective": n}}, "versions": ...}``; samples: one JSON object per line with
    ``doc_id``, ``filter`` and ``exact_match`` (one line per (doc, filter)).
    """
    output_path = Path(output_path)
    rj = _newest(list(output_path.rglob("results_*.json")), "results_*.json", output_path)
    sj = _newest(list(output_path.rglob(f"samples_{task}_*.jsonl")), f"samples_{task}_*.jsonl", output_path)
    try:
        raw = json.loads(rj.read_text())
        task_res = raw["results"][task]
    except (ValueError, KeyError) as e:
        raise RunnerError(f"{rj}: not lm-eval results for {task}: {e}") from None
    n = None
    try:
        n = int(raw["n-samples"][task]["effective"])
    except (KeyError, TypeError, ValueError):
        pass
    filters: dict[str, FilterResult] = {}
    for f in FILTERS:
        key = f"exact_match,{f}"
        if key not in task_res:
            raise RunnerError(f"{rj}: no {key!r} in results (keys: {', '.join(sorted(task_res))})")
        se = task_res.get(f"exact_match_stderr,{f}")
        filters[f] = FilterResult(float(task_res[key]), float(se) if isinstance(se, (int, float)) else None, n or 0)
    items: dict[str, dict[int, bool]] = {f: {} for f in FILTERS}
    with open(sj, encoding="utf-8") as fh:
        for ln, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
                f = s["filter"]
                items.setdefault(f, {})[int(s["doc_id"])] = bool(float(s["exact_match"]))
            except (ValueError, KeyError, TypeError) as e:
                raise RunnerError(f"{sj}:{ln}: not an lm-eval sample line: {e}") from None
    for f in FILTERS:
        if n is not None and len(items.get(f, {})) != n:
            raise RunnerError(f"{sj}: {len(items.get(f, {}))} {f} items, results say {n}")
    version = raw.get("lm_eval_version") or (raw.get("config") or {}).get("lm_eval_version")
    return Gsm8kResult(filters, items, rj, sj, 0.0, version, raw)
