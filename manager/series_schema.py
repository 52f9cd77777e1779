"""The series' schema as pydantic models: what decides, and words, every table the fast path of
:mod:`series` steps aside for.

:func:`series.parse_series` builds the plain dataclasses of :mod:`series` directly when a table is
certainly valid (a strict subset of what these models accept, converted as pydantic would), so a
well-formed series never imports pydantic and ``vpatch status`` starts in milliseconds. Anything else
comes here: :func:`validate` runs the model and returns the dataclass it converts to, or pydantic's
errors, which :func:`series.parse_series` turns into one line per problem with file, line and entry.
``tests/manager/test_series_fast.py`` holds the two paths equal on random tables.
"""
from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import series as plain
from .series import ID_RE, METRICS, VERSION_RE, DEFAULT_SOURCE


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Claim(_Model):
    metric: str = Field(description="tpot | ttft | itl | throughput | gsm8k | kernel:NAME")
    direction: Literal["lower", "higher", "same"] = "lower"
    # strict: a number in TOML, not a string that looks like one ("15.2" is a typo'd claim, not a claim)
    before: float | None = Field(default=None, strict=True)
    after: float | None = Field(default=None, strict=True)
    change_pct: float | None = Field(default=None, strict=True, description="signed relative change in percent")
    unit: str | None = None
    gate: Literal["on", "off"] | None = None
    note: str | None = None

    @field_validator("before", "after")
    @classmethod
    def _measured(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"{v} is not a measurement (a finite number above 0)")
        return v

    @field_validator("change_pct")
    @classmethod
    def _pct(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > -100):
            raise ValueError(f"{v} is not a relative change (a finite percentage above -100)")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v.split(":", 1)[0] not in METRICS:
            raise ValueError(f"unknown metric {v!r} (expected one of {', '.join(METRICS)}, kernel:NAME)")
        return v


class Upstream(_Model):
    state: Literal["pending", "submitted", "merged"] = "pending"
    url: str | None = None
    version: str | None = None


class Entry(_Model):
    id: str
    title: str
    kind: Literal["patch", "overlay"] = "patch"
    area: str = "misc"
    patch: str | None = Field(default=None, description="patch file, relative to patches/ (default <id>.patch)")
    message: str | None = Field(default=None, description="overlay only: commit message body")
    author: str | None = Field(default=None, description="overlay only: 'Name <email>'")
    gate: dict[str, str] = Field(default_factory=dict)
    claims: tuple[Claim, ...] = ()
    upstream: Upstream = Upstream.model_construct()  # not Upstream(): that would build its validator at import
    checks: tuple[str, ...] = ()
    bench: str | None = Field(default=None, description="kernel micro-benchmark command (prints JSON samples)")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_RE.match(v):
            raise ValueError(f"id {v!r} must be lower-case letters, digits, '.', '_' or '-' (at most 64)")
        return v

    @field_validator("upstream", mode="before")
    @classmethod
    def _upstream(cls, v: object) -> object:
        if isinstance(v, Upstream):
            return v
        if v in (None, "pending"):
            return {"state": "pending"}
        if isinstance(v, dict) and len(v) == 1:
            (k, val), = v.items()
            if k == "submitted":
                return {"state": "submitted", "url": val}
            if k == "merged":
                if not isinstance(val, str) or not VERSION_RE.match(val):
                    raise ValueError(f"merged version {val!r} is not a version like 'v0.20.0'")
                return {"state": "merged", "version": val}
        raise ValueError('upstream must be "pending", { submitted = "URL" } or { merged = "vX.Y.Z" }')

    @field_validator("gate")
    @classmethod
    def _gate(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.match(r"^[A-Z_][A-Z0-9_]*$", k):
                raise ValueError(f"gate variable {k!r} is not an environment variable name")
        return {k: str(val) for k, val in v.items()}

    @model_validator(mode="after")
    def _kind_fields(self) -> Entry:
        if self.kind == "overlay" and self.patch:
            raise ValueError("an overlay entry has no 'patch' (its files live in overlay/<id>/)")
        if self.kind == "patch" and (self.message or self.author):
            raise ValueError("'message' and 'author' are for overlays (a patch carries its own)")
        return self


class SeriesHeader(_Model):
    name: str = "series"
    base: str
    source: str = DEFAULT_SOURCE
    package: str = "vllm"
    author: str | None = None


def _fields(m: BaseModel) -> dict[str, Any]:
    return {k: getattr(m, k) for k in type(m).model_fields}


def to_plain(m: BaseModel) -> object:
    """The dataclass of :mod:`series` that a validated model stands for."""
    if isinstance(m, SeriesHeader):
        return plain.SeriesHeader(**_fields(m))
    if isinstance(m, Claim):
        return plain.Claim(**_fields(m))
    if isinstance(m, Upstream):
        return plain.Upstream(**_fields(m))
    assert isinstance(m, Entry)
    d = _fields(m)
    d["claims"] = tuple(plain.Claim(**_fields(c)) for c in m.claims)
    d["upstream"] = plain.Upstream(**_fields(m.upstream))
    return plain.Entry(**d)


MODELS: dict[str, type[BaseModel]] = {"header": SeriesHeader, "entry": Entry}


def validate(kind: Literal["header", "entry"], raw: object) -> tuple[object | None, list[dict[str, Any]]]:
    """(the dataclass, []) when ``raw`` is valid, else (None, pydantic's errors: loc, msg, ...)."""
    try:
        return to_plain(MODELS[kind].model_validate(raw)), []
    except ValidationError as e:
        return None, [dict(err) for err in e.errors()]
