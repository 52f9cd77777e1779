"""The ``[validate]`` table of ``vpatch.toml``: what to measure and how, as typed, validated data.

Example (every key optional; these are the defaults unless noted)::

    [validate]
    model = "cyankiwi/Qwen3-Omni-30B-A3B-Thinking-AWQ-4bit"
    input_len = 128
    output_len = 128
    max_model_len = 4096
    trust_remote_code = true
    dtype = "float16"              # optional; left to vLLM when absent
    gpu_memory_gb = 24             # optional; turned into --gpu-memory-utilization
    device_memory_gb = 96          # optional; the device's total, when it cannot be read
    readiness_timeout_s = 2700
    runs_per_boot = 3
    boots_min = 3
    boots_max = 16
    num_iters = 10                 # vllm bench latency: timed iterations per invocation
    num_iters_warmup = 3
    num_prompts = 20               # vllm bench serve: requests per run
    extra_args = []                # appended to `vllm serve` / `vllm bench latency`
    [validate.env]                 # extra environment for every measured process
    VLLM_ROCM_USE_AITER = "0"
    [validate.gsm8k]
    limit = 1000
    batch_size = 1
    num_fewshot = 5
    backend = "local-completions"  # "vllm" | "local-completions" | "hf"

The run-config hash (:meth:`ValidateConfig.config_hash`) keys results in the store: two
measurements are comparable only when their hashes agree.  It covers everything that changes what
is measured, and nothing cosmetic (key order, defaults written out or left implicit).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vpatch.manager.errors import VpatchError

DEFAULT_MODEL = "cyankiwi/Qwen3-Omni-30B-A3B-Thinking-AWQ-4bit"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Fields that do not change what a measurement means (how long to wait for a server, how many boots
# the sampler may spend, the port, where the gsm8k files are read from): they stay out of the
# run-config hash, so changing them keeps earlier results comparable.
NOT_HASHED = ("readiness_timeout_s", "boots_min", "boots_max", "port", "device_memory_gb", "cpu")
# Per kind of measurement, the fields that only the other kind reads: a new gsm8k limit must not make
# earlier TPOT samples incomparable, nor a new output_len earlier gsm8k results.
KIND_ONLY = {
    "latency": ("gsm8k",),
    "accuracy": ("input_len", "output_len", "num_iters", "num_iters_warmup", "num_prompts", "runs_per_boot", "seed",
                 "tpot_from"),
}


class ConfigError(VpatchError):
    """``vpatch.toml``'s ``[validate]`` table is missing, unreadable or invalid."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gsm8kConfig(_Model):
    limit: int | None = Field(default=1000, ge=1, description="questions from test.jsonl; None = all 1319")
    batch_size: int = Field(default=1, ge=1)
    num_fewshot: int = Field(default=5, ge=0)
    backend: Literal["vllm", "local-completions", "hf"] = "local-completions"
    max_gen_toks: int = Field(default=256, ge=1)
    data_dir: str | None = Field(default=None, description="folder with train.jsonl and test.jsonl")


class ValidateConfig(_Model):
    model: str = DEFAULT_MODEL
    tokenizer: str | None = None
    input_len: int = Field(default=128, ge=1)
    output_len: int = Field(default=128, ge=2, description="TPOT needs at least 2 output tokens")
    max_model_len: int = Field(default=4096, ge=2)
    trust_remote_code: bool = True
    dtype: Literal["auto", "float16", "bfloat16", "float32", "half"] | None = None
    gpu_memory_gb: float | None = Field(default=None, gt=0)
    device_memory_gb: float | None = Field(default=None, gt=0)
    readiness_timeout_s: float = Field(default=2700.0, gt=0)
    runs_per_boot: int = Field(default=3, ge=1)
    boots_min: int = Field(default=3, ge=2)
    boots_max: int = Field(default=16, ge=1)
    num_iters: int = Field(default=10, ge=1)
    num_iters_warmup: int = Field(default=3, ge=0)
    num_prompts: int = Field(default=20, ge=1)
    seed: int = 0
    port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port per boot")
    env: dict[str, str] = Field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    gsm8k: Gsm8kConfig = Gsm8kConfig()
    cpu: dict = Field(default_factory=dict, description="[validate.cpu]: overrides of CPU_PROFILE for --target cpu")
    device: Literal["gpu", "cpu"] = "gpu"  # cpu: vLLM's CPU engine, where eager mode is allowed (no graphs there)
    tpot_from: Literal["median_tpot", "e2el", "cpu_time"] = Field(
        default="median_tpot",
        description="median_tpot: vllm bench serve's median TPOT; e2el: its median end-to-end latency divided "
                    "by output_len; cpu_time: the server's CPU ms per generated token (the cpu target: steady "
                    "when other jobs crowd the machine)")

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: object) -> object:
        if isinstance(v, dict):
            out = {}
            for k, val in v.items():
                if not isinstance(k, str) or not ENV_NAME_RE.match(k):
                    raise ValueError(f"env: {k!r} is not an environment variable name")
                if isinstance(val, bool):
                    val = "1" if val else "0"
                if not isinstance(val, (str, int, float)):
                    raise ValueError(f"env: {k} must be a string or number, not {type(val).__name__}")
                out[k] = str(val)
            return out
        return v

    @model_validator(mode="after")
    def _check(self) -> ValidateConfig:
        if self.boots_max < self.boots_min:
            raise ValueError(f"boots_max ({self.boots_max}) is smaller than boots_min ({self.boots_min})")
        if self.input_len + self.output_len > self.max_model_len:
            raise ValueError(
                f"input_len + output_len ({self.input_len + self.output_len}) exceeds max_model_len ({self.max_model_len})"
            )
        if self.gpu_memory_gb and self.device_memory_gb and self.gpu_memory_gb > self.device_memory_gb:
            raise ValueError(
                f"gpu_memory_gb ({self.gpu_memory_gb}) is more than device_memory_gb ({self.device_memory_gb})"
            )
        return self

    def canonical(self, kind: Literal["latency", "accuracy"] | None = None) -> dict:
        """The hashed content: every field (defaults written out) except the non-semantic ones and,
        for ``kind`` "latency" or "accuracy", the fields only the other kind reads."""
        d = self.model_dump(mode="json")
        for k in NOT_HASHED + KIND_ONLY.get(kind or "", ()):
            d.pop(k, None)
        if d.get("device") == "gpu":  # the default: left out so that hashes from before the field stay valid
            d.pop("device")
        if d.get("tpot_from") == "median_tpot":  # likewise
            d.pop("tpot_from")
        if "gsm8k" in d:
            d["gsm8k"].pop("data_dir", None)
        if kind:
            d["kind"] = kind
        return d

    def canonical_json(self, kind: Literal["latency", "accuracy"] | None = None) -> str:
        return json.dumps(self.canonical(kind), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def config_hash(self, kind: Literal["latency", "accuracy"] | None = None) -> str:
        """sha256 (hex) of the canonical JSON: stable across key order and defaults left implicit.

        Store results under ``config_hash("latency")`` (TPOT/TTFT/ITL) or ``config_hash("accuracy")``
        (gsm8k) so that changing one kind's settings keeps the other kind's results comparable.
        """
        return hashlib.sha256(self.canonical_json(kind).encode()).hexdigest()

    def gpu_memory_utilization(self, device_total_gb: float | None | Literal["auto"] = "auto") -> float | None:
        """``gpu_memory_gb`` as vLLM's ``--gpu-memory-utilization`` fraction of the device's total.

        ``device_total_gb``: the device's total in GB; "auto" reads it (:func:`device_total_memory_gb`,
        nvidia-smi / rocm-smi); None means unknown.  The config's ``device_memory_gb`` wins when set.
        Returns None when no ``gpu_memory_gb`` is configured (vLLM's default then applies).
        """
        if self.gpu_memory_gb is None:
            return None
        if self.device_memory_gb is None and device_total_gb == "auto":
            device_total_gb = device_total_memory_gb()
        total = self.device_memory_gb or device_total_gb
        if not total or total == "auto":
            raise ConfigError(
                f"gpu_memory_gb = {self.gpu_memory_gb} needs the device's total memory, and none could be read",
                "set [validate] device_memory_gb to the device's total memory in GB, or use a machine "
                "where nvidia-smi / rocm-smi report it",
            )
        return gb_to_fraction(self.gpu_memory_gb, total)


# `vpatch validate --target cpu`: vLLM's CPU engine serving the local tiny Qwen3-MoE
# (validation/tinymodel.py). The GPU settings of [validate] do not apply there (another model, another
# device); [validate.cpu] overrides these keys. Eager: the CPU engine has no graphs to replay, eager boots
# without inductor's C++ compile, and it is where the MRoPE cos/sin cache acts (the cache is bypassed
# while torch.compile traces). Boot counts: see the README's calibration.
CPU_PROFILE: dict = {
    "device": "cpu", "dtype": "float32", "max_model_len": 512, "input_len": 32, "output_len": 16, "num_prompts": 4,
    "runs_per_boot": 3, "boots_min": 2, "boots_max": 6, "readiness_timeout_s": 1200.0, "tpot_from": "cpu_time",
    "trust_remote_code": False, "extra_args": ("--max-num-seqs", "4", "--enforce-eager"),
    "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
    "gsm8k": {"limit": 20, "num_fewshot": 0, "max_gen_toks": 32, "batch_size": 1, "backend": "local-completions"},
}


# What one boot of the CPU engine costs in bench runs, for the bisect's planning (README, "The CPU engine":
# a boot 60-100 s; a run 35 s idle with 8 prompts x 64 tokens, shorter with this profile's; at load > 10
# runs took 66-105 s, as long as a boot).
CPU_BOOT_COST_RUNS = 2.0


def cpu_config(cfg: ValidateConfig, model: str) -> ValidateConfig:
    """The run configuration for the cpu target: :data:`CPU_PROFILE`, the local ``model``, then
    ``[validate.cpu]``; ``seed``, ``port`` and gsm8k's ``data_dir`` carry over from ``[validate]``."""
    over = dict(cfg.cpu)
    data: dict = {**CPU_PROFILE, "model": model, "seed": cfg.seed, "port": cfg.port}
    gsm = {**CPU_PROFILE["gsm8k"], "data_dir": cfg.gsm8k.data_dir, **(over.pop("gsm8k", None) or {})}
    env = {**CPU_PROFILE["env"], **(over.pop("env", None) or {})}
    data.update(over)
    data.update(gsm8k=gsm, env=env)
    return parse_validate_config(data, where="[validate.cpu]")


def gb_to_fraction(gb: float, total_gb: float) -> float:
    """``gb`` of ``total_gb`` as a fraction in (0, 1], rounded down to 4 decimals (never over-asks)."""
    if total_gb <= 0:
        raise ConfigError(f"device memory total {total_gb} GB is not positive")
    if gb > total_gb:
        raise ConfigError(
            f"gpu_memory_gb = {gb} is more than the device has ({total_gb:.2f} GB)",
            "lower [validate] gpu_memory_gb",
        )
    frac = int(gb / total_gb * 10000) / 10000
    return max(frac, 0.0001)


def _format_errors(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_validate_config(data: dict, *, where: str = "vpatch.toml") -> ValidateConfig:
    """Validate an already-parsed ``[validate]`` table."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [validate] must be a table")
    try:
        return ValidateConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            f"{where}: [validate]: {_format_errors(e)}",
            "fix the [validate] table (its keys are documented in vpatch.validation.config)",
        ) from None


def load_validate_config(path: Path | str) -> ValidateConfig:
    """Read ``[validate]`` from ``path`` (a TOML file).  A file without the table gives the defaults."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", "create it, or run from the series' directory") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", "fix the syntax at the line named") from None
    return parse_validate_config(doc.get("validate", {}), where=str(path))


@functools.lru_cache(maxsize=1)
def device_total_memory_gb() -> float | None:
    """The first GPU's total memory in GB (10^9 bytes) from nvidia-smi or rocm-smi; None if neither answers."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout
            mib = float(out.strip().splitlines()[0])
            return mib * 1024 * 1024 / 1e9
        except (subprocess.SubprocessError, OSError, ValueError, IndexError):
            pass
    if shutil.which("rocm-smi"):
        try:
            out = subprocess.run(
                ["rocm-smi", "--showmeminfo", "vram", "--json"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout
            doc = json.loads(out)
            for card in doc.values():
                for k, v in card.items():
                    if "total memory" in k.lower() and "used" not in k.lower():
                        return float(v) / 1e9
        except (subprocess.SubprocessError, OSError, ValueError, AttributeError):
            pass
    return None
