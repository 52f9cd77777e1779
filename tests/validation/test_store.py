"""The results store on real SQLite files in tmp dirs."""
from __future__ import annotations

import sqlite3

import pytest

from vpatch.validation.config import ValidateConfig
from vpatch.validation.host import host_fingerprint, tool_versions
from vpatch.validation.store import (
    GATE_NONE,
    RunContext,
    StoreError,
    new_boot_id,
    open_store,
)

CFG = ValidateConfig()
HOST = {"id": "hostA", "hostname": "a", "cpu": "x", "gpus": ["gfx1151"], "driver": "1", "rocm": "6.4"}
VERS = {"vllm": "0.28.0", "torch": "2.13.0", "lm_eval": "0.4.13"}


def ctx(tree="t1", gate=GATE_NONE, host=HOST, top=False, label=None, entry="e1", idx=1):
    return RunContext(
        tree=tree, base="v0.28.0", config_hash=CFG.config_hash("latency"), config_content=CFG.canonical("latency"),
        entry_id=entry, prefix_index=idx, gate=gate, host=host, versions=VERS, top=top, label=label,
    )


def test_samples_grouped_by_boot_in_order_and_filtered_by_key(tmp_path):
    with open_store(tmp_path / "r.db") as s:
        b1, b2 = new_boot_id(), new_boot_id()
        s.add_samples(ctx(), "tpot", [13.70, 13.72], unit="ms", boot_id=b1, created_at=100)
        s.add_samples(ctx(), "tpot", [13.80], unit="ms", boot_id=b2, created_at=200)
        s.add_samples(ctx(), "tpot", [13.81], unit="ms", boot_id=b2, first_run_index=1, created_at=201)
        s.add_samples(ctx(gate="on"), "tpot", [12.0], unit="ms", boot_id=new_boot_id())
        s.add_samples(ctx(tree="t2"), "tpot", [99.0], unit="ms", boot_id=new_boot_id())
        s.add_samples(ctx(), "ttft", [50.0], unit="ms", boot_id=b1)
        h = CFG.config_hash("latency")
        assert s.samples("t1", "tpot", h) == [[13.70, 13.72], [13.80, 13.81]]
        assert s.samples("t1", "tpot", h, gate="on") == [[12.0]]
        assert len(s.samples("t1", "tpot", h, gate="*")) == 3
        assert s.samples("t1", "tpot", "other-config") == []
        assert s.has_results("t1", "tpot", h)
        assert s.has_results("t1", "tpot", h, min_boots=2)
        assert not s.has_results("t1", "tpot", h, min_boots=3)
        assert not s.has_results("t3", "tpot", h)
        row = s.sample_rows(tree="t1", metric="ttft")[0]
        # every row carries its full context
        assert row["entry_id"] == "e1" and row["prefix_index"] == 1 and row["base"] == "v0.28.0"
        assert row["vllm_version"] == "0.28.0" and row["lm_eval_version"] == "0.4.13" and row["host_id"] == "hostA"
        assert row["unit"] == "ms" and row["boot_id"] == b1 and row["gate"] == GATE_NONE
        assert s.config_content(h)["output_len"] == 128
        assert s.host("hostA")["gpus"] == ["gfx1151"]


def test_readding_the_same_run_is_a_noop_and_bad_values_are_refused(tmp_path):
    with open_store(tmp_path / "r.db") as s:
        b = new_boot_id()
        assert s.add_samples(ctx(), "tpot", [1.0, 2.0], unit="ms", boot_id=b) == 2
        assert s.add_samples(ctx(), "tpot", [1.0, 2.0], unit="ms", boot_id=b) == 0
        with pytest.raises(StoreError, match="non-finite"):
            s.add_samples(ctx(), "tpot", [float("nan")], unit="ms", boot_id=b, first_run_index=5)
        with pytest.raises(StoreError, match="gate"):
            ctx(gate="maybe")


def test_wal_mode_and_schema_version_and_newer_schema_refused(tmp_path):
    p = tmp_path / "r.db"
    with open_store(p) as s:
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.schema_version == 1
    c = sqlite3.connect(p)
    c.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(p)
    with pytest.raises(StoreError, match="no results store"):
        open_store(tmp_path / "missing.db", create=False)
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a usable"):
        open_store(tmp_path / "junk.db")


def test_accuracy_items_latest_run_and_by_boot(tmp_path):
    with open_store(tmp_path / "r.db") as s:
        h = CFG.config_hash("accuracy")
        c = RunContext(tree="t1", base="v0.28.0", config_hash=h, config_content=CFG.canonical("accuracy"), host=HOST)
        b1, b2 = new_boot_id(), new_boot_id()
        s.add_accuracy_items(c, [(0, True), (1, False), (2, True)], filter_name="strict-match", boot_id=b1, created_at=1)
        s.add_accuracy_items(c, [(0, True), (1, True), (2, True)], filter_name="strict-match", boot_id=b2, created_at=2)
        s.add_accuracy_items(c, [(0, False)], filter_name="flexible-extract", boot_id=b2, created_at=2)
        assert s.accuracy_items("t1", h, "strict-match") == {0: True, 1: True, 2: True}
        assert s.accuracy_items("t1", h, "strict-match", boot_id=b1) == {0: True, 1: False, 2: True}
        assert s.accuracy_items("t1", h, "flexible-extract") == {0: False}
        assert s.accuracy_items("t9", h, "strict-match") == {}


def test_shards_from_two_machines_merge_without_duplicates(tmp_path):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    hostb = dict(HOST, id="hostB", hostname="b")
    shared_boot = new_boot_id()
    with open_store(a) as sa:
        sa.add_samples(ctx(), "tpot", [1.0, 1.1], unit="ms", boot_id=shared_boot, created_at=1)
        sa.add_accuracy_items(ctx(), [(0, True)], filter_name="strict-match", boot_id=shared_boot)
    with open_store(b) as sb:
        sb.add_samples(ctx(host=hostb), "tpot", [2.0], unit="ms", boot_id=new_boot_id(), created_at=2)
    # a shard exported from a, merged into b, twice: same result
    with open_store(a) as sa:
        shard = sa.export(tmp_path / "shards" / "a-shard.db")
        with pytest.raises(StoreError, match="already exists"):
            sa.export(shard)
    with open_store(b) as sb:
        gained = sb.merge(shard)
        assert gained["samples"] == 2 and gained["accuracy_items"] == 1 and gained["hosts"] == 1
        assert sb.merge(shard) == {"configs": 0, "hosts": 0, "samples": 0, "accuracy_items": 0}
        assert sb.samples("t1", "tpot", CFG.config_hash("latency")) == [[1.0, 1.1], [2.0]]
        assert sb.host("hostA")["hostname"] == "a"
    # and back the other way: both now hold the same rows
    with open_store(a) as sa:
        sa.merge(b)
        assert sa.counts() == open_store(b).counts()
    with open_store(b) as sb, pytest.raises(StoreError, match="no such"):
        sb.merge(tmp_path / "nope.db")


def test_nightly_history_is_top_of_stack_per_day(tmp_path):
    day = 86400
    with open_store(tmp_path / "r.db") as s:
        h = CFG.config_hash("latency")
        for d, (tree, vals) in enumerate([("ta", [13.70, 13.74]), ("ta", [13.76]), ("tb", [14.0])]):
            for v in vals:
                s.add_samples(ctx(tree=tree, top=True, label="nightly"), "tpot", [v], unit="ms",
                              boot_id=new_boot_id(), created_at=1_700_000_000 + d * day)
        s.add_samples(ctx(tree="ta", top=False), "tpot", [99.0], unit="ms", boot_id=new_boot_id(), created_at=1_700_000_000)
        hist = s.nightly_history("tpot", h)
        assert [p.tree for p in hist] == ["ta", "ta", "tb"]
        assert hist[0].boots == 2 and hist[0].median == pytest.approx(13.72)
        assert hist[0].day < hist[1].day < hist[2].day
        assert s.nightly_history("tpot", h, label="other") == []


def test_host_fingerprint_and_versions_work_on_a_cpu_box():
    fp = host_fingerprint()
    assert fp["hostname"] and fp["cpu"] and isinstance(fp["gpus"], list) and len(fp["id"]) == 16
    assert host_fingerprint()["id"] == fp["id"]
    v = tool_versions()
    assert set(v) == {"vllm", "torch", "lm_eval"} and v["lm_eval"] == "0.4.13"
