"""Measuring on the cpu target: vLLM's CPU engine (``vpatch build --target cpu``) serving a local tiny model.

:func:`prepare` gives what a :class:`~vpatch.validation.validate.Validator` needs for it:

- ``materialize``: a prefix -> the venv of its cpu build (built on demand, keyed by tree hash); the
  measurers run that venv's ``vllm``;
- ``engine``: a prefix -> its engine fingerprint (vLLM ``<release>+cpu``, torch, the wheel's library
  the platform loaded), stored with every sample;
- ``not_measurable``: entry id -> why its change cannot show on this target (compiled code only);
- the run configuration (``CPU_PROFILE`` over the local model, ``[validate.cpu]`` on top) and a
  :class:`~vpatch.validation.measure.BootShare` so TPOT, TTFT, outputs and gsm8k share one boot.

The model is the seeded random-weight Qwen3-MoE of :mod:`validation.tinymodel`, made on this machine
under ``$VPATCH_CACHE/models/`` (never from a hub), unless ``[validate.cpu] model`` names another.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from vpatch.manager.build import cpu_effects, ensure_cpu_runtime
from vpatch.manager.context import cache_dir
from vpatch.manager.prefixes import Prefix
from vpatch.manager.workspace import Workspace

from .config import ValidateConfig, cpu_config
from .measure import BootShare, MeasureError

DEFAULT_MODEL = "qwen3-moe"


def tiny_model(kind: str = DEFAULT_MODEL, seed: int = 0, data_dir: str | None = None) -> Path:
    """The local tiny model (made once; its tokenizer is trained on GSM8K's train.jsonl)."""
    from .tinymodel import default_data_dir, ensure_tiny_model

    out = cache_dir() / "models" / f"{kind}-seed{seed}"
    data = Path(data_dir) if data_dir else default_data_dir()
    if not (out / "config.json").exists() and not (data / "train.jsonl").is_file():
        raise MeasureError(f"cannot make the tiny model: no GSM8K train.jsonl in {data} (its tokenizer is trained on it)",
                           "set VPATCH_GSM8K_DIR or [validate.gsm8k] data_dir to the folder with train.jsonl")
    return ensure_tiny_model(kind, cache_dir() / "models", seed, data)


@dataclass
class CpuTarget:
    cfg: ValidateConfig
    materialize: Callable[[Prefix], Path]
    engine: Callable[[Prefix], dict]
    not_measurable: dict[str, str]
    share: BootShare = field(default_factory=BootShare)
    runtimes: dict[str, dict] = field(default_factory=dict)


def _lm_eval_version() -> str | None:
    try:
        return metadata.version("lm-eval")
    except metadata.PackageNotFoundError:
        return None


def engine_info(runtime: dict, lm_eval: str | None = None) -> dict:
    """What a sample stores about the engine that measured it, from a cpu runtime record."""
    fp = runtime.get("fingerprint") or {}
    return {"versions": {"vllm": fp.get("vllm"), "torch": fp.get("torch"), "lm_eval": lm_eval or _lm_eval_version()},
            "fingerprint": {k: fp.get(k) for k in ("vllm", "torch", "platform", "compiled_loaded")}}


def prepare(ctx, ws: Workspace, vcfg: ValidateConfig, *, step=None) -> CpuTarget:
    model = vcfg.cpu.get("model") or str(tiny_model(data_dir=vcfg.gsm8k.data_dir))
    cfg = cpu_config(vcfg, model)
    head = ws.git.head() or ""
    not_measurable = {e["entry"]: e["reason"] for e in cpu_effects(ws, head) if e["effect"] != "python"}
    runtimes: dict[str, dict] = {}
    lm_eval = _lm_eval_version()

    def runtime(p: Prefix) -> dict:
        if p.tree not in runtimes:
            runtimes[p.tree] = ensure_cpu_runtime(ctx, ws, p.commit, p.entry_id, step=step)
        return runtimes[p.tree]

    def materialize(p: Prefix) -> Path:
        return Path(runtime(p)["venv"])

    def engine(p: Prefix) -> dict:
        return engine_info(runtime(p), lm_eval)

    return CpuTarget(cfg, materialize, engine, not_measurable, runtimes=runtimes)
