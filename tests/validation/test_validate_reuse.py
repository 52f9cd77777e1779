"""Reuse without lying: a comparison replays only the boots measured as its own pairs (real SQLite store)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vpatch.manager.prefixes import Prefix
from vpatch.validation.store import Store
from vpatch.validation.validate import Validator, config_hash


class DriftingMeasurer:
    """Prefix k (tree "t<k>") is +step·k; every boot drifts +0.4 % further (time passes)."""

    metric, unit, lower_is_better, kind = "tpot", "ms", True, "samples"

    def __init__(self, step: float = 0.0, drift: float = 0.004, seed: int = 0) -> None:
        self.step, self.drift, self.t = step, drift, 0
        self.rng = np.random.default_rng(seed)
        self.log: list[str] = []

    def config_content(self) -> dict:
        return {"kind": "sim"}

    def boot(self, tree: Path, env=None, runs=None) -> list[float]:
        k = int(Path(tree).name[1:])
        self.t += 1
        self.log.append(Path(tree).name)
        level = 15.2 * (1 + self.step * k) * (1 + self.drift * self.t)
        return list(level * (1 + self.rng.normal(0, 0.0005, 3)))


def prefixes(n: int) -> list[Prefix]:
    return [Prefix(k, f"e{k}" if k else None, f"c{k}", f"t{k}") for k in range(n + 1)]


def test_chain_measures_fresh_pairs_and_a_rerun_replays_them(tmp_path) -> None:
    pref = prefixes(4)
    store = Store.open(tmp_path / "r.sqlite")
    m = DriftingMeasurer()
    v = Validator(store, "v0", None, lambda p: Path(p.tree))
    rows = v.run(m, pref[1:], None, pref)
    # A strong drift (0.4 % per boot) with interleaved A B B A pairs: every comparison of the chain
    # is free of it. Replaying e1's boots from comparison 1 as partners of e2 would call e2 "worse".
    assert [r.verdict for r in rows] == ["same"] * 4, [r.describe for r in rows]
    # every comparison measured both of its sides itself
    assert all(r.new_boots >= 6 for r in rows)
    assert m.log[:2] == ["t0", "t1"] and "t1" in m.log[rows[0].new_boots:rows[0].new_boots + 2]
    assert v.stored_boots(pref[1], "tpot", config_hash({"kind": "sim"})) == (rows[0].new_boots + rows[1].new_boots) // 2
    before = len(m.log)
    again = Validator(store, "v0", None, lambda p: Path(p.tree)).run(m, pref[1:], None, pref)
    assert len(m.log) == before and all(r.new_boots == 0 for r in again)
    assert [r.describe for r in again] == [r.describe for r in rows]
    store.close()


def test_against_base_pairs_each_comparison_with_its_own_base_boots(tmp_path) -> None:
    pref = prefixes(3)
    store = Store.open(tmp_path / "r.sqlite")
    m = DriftingMeasurer(step=0.02)
    rows = Validator(store, "v0", None, lambda p: Path(p.tree)).run(m, pref[1:], pref[0], pref)
    assert [r.verdict for r in rows] == ["worse"] * 3
    # the change estimates are +2, +4, +6 % (not inflated by the drift since base's first boots)
    for k, r in enumerate(rows, start=1):
        assert abs(r.comparison["change_pct"] - 2.0 * k) < 0.5, r.describe
    assert m.log.count("t0") == sum(r.new_boots for r in rows) // 2
    store.close()
