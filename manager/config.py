"""The ``[build]`` table of ``vpatch.toml``: how `vpatch build` builds, as typed, validated data.

Every key is optional; the defaults are shown::

    [build]
    target = "rocm"                  # default target; without it: rocm where ROCm is present, else refused
    arch = "gfx1100;gfx1151"         # PYTORCH_ROCM_ARCH (a list or a ;/, separated string)
    jobs = 16                        # MAX_JOBS (default: the CPUs this process may use)
    python = "/usr/bin/python3"      # the interpreter the build venv is made from (for rocm: one with a
                                     # ROCm torch, the venv sees its site-packages); default: vpatch's own
    ccache = "auto"                  # true | false | "auto" (use it when `ccache` is on PATH)
    build_type = "Release"           # CMAKE_BUILD_TYPE
    keep_artefacts = 4               # compiled libraries kept per target to reuse without compiling
    compiled_paths = [...]           # replaces the compiled-source set (git pathspec-like globs)
    extra_compiled_paths = []        # added to it
    [build.env]                      # extra environment for every build step
    HIP_PLATFORM = "amd"
    [build.command]                  # a lab's own recipe, per target (or `any`): replaces vpatch's
    rocm = [["{python}", "setup.py", "build_ext", "--inplace", "--build-temp", "{build_dir}"]]

A command is one argv list or a list of them (steps run in order in the build tree), never a shell
string; placeholders: ``{tree}`` (the checked-out prefix), ``{build_dir}`` (the persistent build
directory), ``{python}``, ``{jobs}``, ``{arch}`` (``;``-separated), ``{target}``. With a command
override vpatch makes no venv and runs no toolchain check: the recipe owns its environment.
Compiled translation units are counted from the build log with ``tu_pattern`` (a regex; the default
matches ninja/make lines like ``[3/120] Building HIP object ...``).
"""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import VpatchError

TARGETS = ("rocm", "cuda", "cpu", "empty")
Target = Literal["rocm", "cuda", "cpu", "empty"]
DEFAULT_ARCH = ["gfx1100", "gfx1151"]
DEFAULT_TU_PATTERN = r"Building (?:C|CXX|CUDA|HIP) object|^\s*(?:CC|CXX|HIPCC|NVCC)\s+\S+\.o\b"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ARCH_RE = re.compile(r"^(gfx[0-9a-f]{3,5}[a-z0-9:+\-]*|sm_\d+a?|\d+\.\d+a?|native|all)$")

Argv = list[str]


class ConfigError(VpatchError):
    """vpatch.toml is invalid."""


def split_arch(value: str | list[str]) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [a for item in items for a in re.split(r"[;,\s]+", str(item)) if a]


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: Target | None = None
    arch: list[str] = Field(default_factory=lambda: list(DEFAULT_ARCH))
    jobs: int | None = Field(default=None, ge=1, le=4096)
    python: str | None = None
    ccache: bool | Literal["auto"] = "auto"
    build_type: str = "Release"
    keep_artefacts: int = Field(default=4, ge=0, le=1000)
    env: dict[str, str] = Field(default_factory=dict)
    command: dict[str, list[Argv]] = Field(default_factory=dict)
    compiled_paths: list[str] | None = None
    extra_compiled_paths: list[str] = Field(default_factory=list)
    tu_pattern: str = DEFAULT_TU_PATTERN

    @field_validator("arch", mode="before")
    @classmethod
    def _arch(cls, v):
        if isinstance(v, (str, list)):
            v = split_arch(v)
            bad = [a for a in v if not ARCH_RE.match(a)]
            if bad:
                raise ValueError(f"not a GPU architecture: {', '.join(bad)} (e.g. gfx1100, gfx1151)")
            if not v:
                raise ValueError("empty architecture list")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]):
        bad = [k for k in v if not ENV_NAME_RE.match(k)]
        if bad:
            raise ValueError(f"not an environment variable name: {', '.join(bad)}")
        return v

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, v):
        if not isinstance(v, dict):
            raise ValueError("[build.command] is a table: target = [argv, ...] (or any = ...)")
        out = {}
        for k, steps in v.items():
            if k not in (*TARGETS, "any"):
                raise ValueError(f"unknown target {k!r} in [build.command] (one of {', '.join(TARGETS)}, any)")
            if isinstance(steps, str):
                raise ValueError(f"[build.command] {k}: a list of arguments, not a shell string")
            if isinstance(steps, list) and steps and all(isinstance(s, str) for s in steps):
                steps = [steps]  # one argv
            if not isinstance(steps, list) or not steps or not all(
                    isinstance(s, list) and s and all(isinstance(a, str) for a in s) for s in steps):
                raise ValueError(f"[build.command] {k}: an argv list or a list of argv lists")
            out[k] = steps
        return out

    @field_validator("tu_pattern")
    @classmethod
    def _pattern(cls, v: str):
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"tu_pattern is not a regular expression: {e}") from None
        return v

    def command_for(self, target: str) -> list[Argv] | None:
        return self.command.get(target) or self.command.get("any")

    def default_jobs(self) -> int:
        if self.jobs:
            return self.jobs
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:
            return os.cpu_count() or 1


class Config(BaseModel):
    """The parts of vpatch.toml that `vpatch build` reads; other tables belong to other commands."""

    model_config = ConfigDict(extra="ignore")
    build: BuildConfig = Field(default_factory=BuildConfig)
    path: Path | None = None


def _where(loc: tuple) -> str:
    parts = ["build"] + [str(p) for p in loc]
    return ".".join(parts)


def load_build_config(path: Path) -> BuildConfig:
    """``[build]`` of ``path`` (defaults when the file or the table is absent); errors name the file."""
    path = Path(path)
    if not path.exists():
        return BuildConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", "fix the file; `[build]` keys are listed in manager/config.py") from None
    table = data.get("build", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: `build` must be a table ([build])")
    try:
        return BuildConfig.model_validate(table)
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        msg = first["msg"].removeprefix("Value error, ")
        line = _line_of(path, first["loc"])
        raise ConfigError(f"{path}{f':{line}' if line else ''}: [{_where(first['loc'])}]: {msg}{more}",
                          "fix vpatch.toml; the [build] keys are documented in manager/config.py",
                          data={"problems": [{"key": _where(x["loc"]), "message": x["msg"]} for x in e.errors()]}) from None


def _line_of(path: Path, loc: tuple) -> int:
    """Best effort: the line of ``key =`` inside [build] (0 when unknown)."""
    if not loc:
        return 0
    key = str(loc[0])
    in_build = False
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if s.startswith("["):
            in_build = s.startswith("[build")
            if s.strip("[]").strip() == f"build.{key}":
                return i
            continue
        if in_build and re.match(rf"^{re.escape(key)}\s*=", s):
            return i
    return 0
