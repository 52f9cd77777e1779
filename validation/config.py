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
    boots_max = 12
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
NOT_HASHED = ("readiness_timeout_s", "boots_min", "boots_max", "port", "device_memory_gb")
# Per kind of measurement, the fields that only the other kind reads: a new gsm8k limit must not make
# earlier TPOT samples incomparable, nor a new output_len earlier gsm8k results.
KIND_ONLY = {
    "latency": ("gsm8k",),
    "accuracy": ("input_len", "output_len", "num_iters", "num_iters_warmup", "num_prompts", "runs_per_boot", "seed"),
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
    boots_min: int = Field(default=3, ge=1)
    boots_max: int = Field(default=12, ge=1)
    num_iters: int = Field(default=10, ge=1)
    num_iters_warmup: int = Field(default=3, ge=0)
    num_prompts: int = Field(default=20, ge=1)
    seed: int = 0
    port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port per boot")
    env: dict[str, str] = Field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    gsm8k: Gsm8kConfig = Gsm8kConfig()

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
    def _check(self) -> "ValidateConfig":
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
        if not total:
            raise ConfigError(
                f"gpu_memory_gb = {self.gpu_memory_gb} needs the device's total memory, and none could be read",
                "set [validate] device_memory_gb to the device's total memory in GB, or use a machine "
                "where nvidia-smi / rocm-smi report it",
            )
        return gb_to_fraction(self.gpu_memory_gb, total)


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
