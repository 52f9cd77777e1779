"""The series' fast path (model_construct for tables certainly valid) builds exactly what pydantic's
validation builds, and steps aside for everything else, so the error messages stay pydantic's."""
from __future__ import annotations

import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vpatch.manager.series import Entry, SeriesHeader, _fast_entry, _fast_header, load_series

REPO = Path(__file__).resolve().parents[2]


def same(fast, model, raw):
    """fast is None (pydantic decides) or equal, field by field and as dumped, to model.model_validate(raw)."""
    try:
        slow = model.model_validate(raw)
    except ValidationError:
        assert fast is None, f"the fast path accepted what pydantic rejects: {raw!r}"
        return
    if fast is not None:  # repr too: 15 == 15.0, but a claim's before is a float either way
        assert fast == slow and repr(fast) == repr(slow) and fast.model_dump() == slow.model_dump(), raw


def test_the_shipped_series_takes_the_fast_path_and_equals_pydantic():
    doc = tomllib.loads((REPO / "patches" / "series.toml").read_text())
    assert _fast_header(doc["series"]) == SeriesHeader.model_validate(doc["series"])
    for raw in doc["entry"]:
        fast = _fast_entry(raw)
        assert fast is not None, raw["id"]
        same(fast, Entry, raw)
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
    same(_fast_entry(raw), Entry, raw)


@given(st.dictionaries(st.sampled_from(["name", "base", "source", "package", "author", "extra"]), scalars, max_size=4))
@settings(max_examples=200, deadline=None)
def test_fast_header_equals_pydantic_or_steps_aside(raw):
    same(_fast_header(raw), SeriesHeader, raw)


def test_valid_claims_and_upstreams_take_the_fast_path():
    raw = {"id": "e", "title": "t", "gate": {"VLLM_X": "1"}, "checks": ["true"],
           "upstream": {"merged": "v0.20.0"},
           "claims": [{"metric": "tpot", "before": 15, "after": 14.5, "unit": "ms"}, {"metric": "gsm8k", "change_pct": 0}]}
    fast = _fast_entry(raw)
    assert fast is not None and fast == Entry.model_validate(raw)
    assert fast.claims[0].before == 15.0 and type(fast.claims[0].before) is float
    assert fast.claims[0].expected_pct == (14.5 - 15) / 15 * 100
