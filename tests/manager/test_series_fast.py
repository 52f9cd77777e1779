"""The series' fast path (dataclasses built directly for tables certainly valid) builds exactly what the
pydantic schema builds, and steps aside for everything else, so the error messages stay pydantic's."""
from __future__ import annotations

import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vpatch.manager import series_schema
from vpatch.manager.series import _fast_entry, _fast_header, load_series

REPO = Path(__file__).resolve().parents[2]


def same(fast, kind, raw):
    """fast is None (the schema decides) or equal, field by field and in repr, to what the schema makes of raw."""
    slow, errors = series_schema.validate(kind, raw)
    if errors:
        assert slow is None and fast is None, f"the fast path accepted what pydantic rejects: {raw!r}"
        return
    if fast is not None:  # repr too: 15 == 15.0, but a claim's before is a float either way
        assert fast == slow and repr(fast) == repr(slow), raw


def test_the_shipped_series_takes_the_fast_path_and_equals_pydantic():
    doc = tomllib.loads((REPO / "patches" / "series.toml").read_text())
    assert _fast_header(doc["series"]) == series_schema.validate("header", doc["series"])[0]
    for raw in doc["entry"]:
        fast = _fast_entry(raw)
        assert fast is not None, raw["id"]
        same(fast, "entry", raw)
    assert load_series(REPO / "patches" / "series.toml").ids() == [e["id"] for e in doc["entry"]]


scalars = st.one_of(st.none(), st.booleans(), st.integers(-200, 200), st.floats(allow_nan=True),
                    st.sampled_from(["", "x", "pending", "v0.28.0", "lower", "same", "on", "off", "overlay", "patch",
                                     "tpot", "kernel:moe", "speed", "A_B", "bad key", "Bad Id", "ok-id"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(
                                                           ["merged", "submitted", "metric", "before", "after",
                                                            "change_pct", "direction", "gate", "X", "bad key"]),
                                                           inner, max_size=3)), max_leaves=6)
ENTRY_KEYS = ["id", "title", "kind", "area", "patch", "message", "author", "gate", "claims", "upstream", "checks",
              "bench", "extra"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(ENTRY_KEYS), values, max_size=7), st.sampled_from(["ok-id", "Bad Id", 3]),
       st.booleans())
def test_fast_entry_equals_pydantic_or_steps_aside(raw, eid, with_title):
    raw = {"id": eid, **({"title": "t"} if with_title else {}), **raw}
    same(_fast_entry(raw), "entry", raw)


@given(st.dictionaries(st.sampled_from(["name", "base", "source", "package", "author", "extra"]), scalars, max_size=4))
@settings(max_examples=200, deadline=None)
def test_fast_header_equals_pydantic_or_steps_aside(raw):
    same(_fast_header(raw), "header", raw)


def test_valid_claims_and_upstreams_take_the_fast_path():
    raw = {"id": "e", "title": "t", "gate": {"VLLM_X": "1"}, "checks": ["true"],
           "upstream": {"merged": "v0.20.0"},
           "claims": [{"metric": "tpot", "before": 15, "after": 14.5, "unit": "ms"}, {"metric": "gsm8k", "change_pct": 0}]}
    fast = _fast_entry(raw)
    assert fast is not None and fast == series_schema.validate("entry", raw)[0]
    assert fast.claims[0].before == 15.0 and type(fast.claims[0].before) is float
    assert fast.claims[0].expected_pct == (14.5 - 15) / 15 * 100


def test_a_well_formed_series_loads_without_pydantic():
    """The point of the fast path: `vpatch status` and `lint` start without importing pydantic."""
    import subprocess
    import sys
    code = ("import sys; from vpatch.manager.series import load_series; "
            f"load_series(__import__('pathlib').Path({str(REPO / 'patches' / 'series.toml')!r})); "
            "print('pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_malformed_entry_still_gets_pydantics_words(tmp_path):
    import pytest
    from vpatch.manager.errors import SeriesError
    p = tmp_path / "series.toml"
    p.write_text('[series]\nbase = "v0.28.0"\n\n[[entry]]\nid = "e"\ntitle = "t"\n'
                 '[[entry.claims]]\nmetric = "tpot"\nbefore = -3\n')
    with pytest.raises(SeriesError) as ei:
        load_series(p)
    assert "series.toml:4 [entry e]: error: claims.0.before: -3.0 is not a measurement" in str(ei.value)
