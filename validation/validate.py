"""`vpatch validate`: measure each prefix where results are missing, compare, check claims.

Flow per metric, for each probe prefix k against its reference (the previous prefix, the base, or a
named entry): the boots already in the results store for both trees are replayed into an
:class:`~vpatch.validation.sampling.AdaptiveComparison` in interleaved order (A B A B …); only when the
comparison still needs a boot of a side and the store has none left is a new boot measured (and
stored at once, so a crash loses nothing). A second run over the same trees and configuration
therefore measures nothing new. Accuracy is measured once per tree and compared per question with
McNemar's exact test.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from vpatch.manager.prefixes import Prefix
from vpatch.manager.series import Series

from . import stats
from .sampling import AdaptiveComparison
from .store import GATE_NONE, RunContext, Store, new_boot_id


def config_hash(content: Mapping) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Row:
    position: int
    entry: str
    reference: str
    metric: str
    verdict: str
    describe: str
    comparison: dict
    new_boots: int = 0
    claims: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Validator:
    store: Store
    base: str
    series: Series | None
    materialize: Callable[[Prefix], Path]
    gate: str = GATE_NONE
    env: Mapping[str, str] | None = None
    min_boots: int = 3
    max_boots: int = 12
    alpha: float = 0.01
    on_boot: Callable[[str], None] | None = None
    measured: int = 0

    def _ctx(self, p: Prefix, chash: str, content: Mapping, top: bool = False) -> RunContext:
        return RunContext(tree=p.tree, base=self.base, config_hash=chash, config_content=dict(content),
                          entry_id=p.entry_id, prefix_index=p.position, gate=self.gate, label=p.label, top=top)

    def boot_samples(self, m, p: Prefix, chash: str, content: Mapping, top: bool = False) -> list[float]:
        tree = self.materialize(p)
        if self.on_boot:
            self.on_boot(f"{m.metric} boot on {p.label}")
        values = m.boot(tree, env=self.env)
        self.store.add_samples(self._ctx(p, chash, content, top), m.metric, values, unit=m.unit, boot_id=new_boot_id())
        self.measured += 1
        return values

    def compare_samples(self, m, ref: Prefix, probe: Prefix, top: Prefix | None = None) -> tuple[stats.Comparison, int]:
        content = m.config_content()
        chash = config_hash(content)
        stored = {"a": self.store.samples(ref.tree, m.metric, chash, self.gate),
                  "b": self.store.samples(probe.tree, m.metric, chash, self.gate)}
        used = {"a": 0, "b": 0}
        sampler = AdaptiveComparison(min_boots=self.min_boots, max_boots=self.max_boots, alpha=self.alpha,
                                     lower_is_better=m.lower_is_better, metric=m.metric, unit=m.unit)
        new = 0
        while not sampler.done:
            side = sampler.next_side()
            if used[side] < len(stored[side]):
                runs = stored[side][used[side]]
            else:
                p = ref if side == "a" else probe
                runs = self.boot_samples(m, p, chash, content, top=top is not None and p.tree == top.tree)
                stored[side].append(runs)
                new += 1
            used[side] += 1
            sampler.add(side, runs)
        cmp = sampler.decision()
        assert cmp is not None
        return cmp, new

    def items(self, m, p: Prefix) -> tuple[dict[int, bool], int]:
        content = m.config_content()
        chash = config_hash(content)
        have = self.store.accuracy_items(p.tree, chash, m.filter_name, self.gate)
        if have:
            return have, 0
        tree = self.materialize(p)
        if self.on_boot:
            self.on_boot(f"{m.metric} on {p.label}")
        per_filter = m.items(tree, env=self.env)
        boot = new_boot_id()
        ctx = self._ctx(p, chash, content)
        for f, items in per_filter.items():
            self.store.add_accuracy_items(ctx, sorted(items.items()), filter_name=f, boot_id=boot)
        acc = m.last.get(m.filter_name, {}).get("exact_match")
        if acc is not None:
            self.store.add_samples(ctx, m.metric, [100.0 * acc], unit="%", boot_id=boot)
        self.measured += 1
        return per_filter[m.filter_name], 1

    def claims_for(self, entry_id: str | None, metric: str, cmp: stats.Comparison | None) -> list[dict]:
        if self.series is None or entry_id is None or entry_id not in self.series.ids():
            return []
        out = []
        for c in self.series.get(entry_id).claims:
            if c.metric != metric or cmp is None:
                continue
            if c.gate and self.gate != GATE_NONE and c.gate != self.gate:
                continue
            chk = stats.check_claim(c.expected_pct, c.direction, cmp)
            out.append({"claim": c.model_dump(exclude_none=True), **chk.as_dict()})
        return out

    def run(self, m, prefixes: Sequence[Prefix], against: Prefix | None, all_prefixes: Sequence[Prefix]) -> list[Row]:
        rows = []
        by_pos = {p.position: p for p in all_prefixes}
        top = all_prefixes[-1] if all_prefixes else None
        for probe in prefixes:
            if probe.position == 0 and against is None:
                continue
            ref = against if against is not None else by_pos[probe.position - 1]
            if ref.tree == probe.tree:
                continue
            if m.kind == "items":
                a, na = self.items(m, ref)
                b, nb = self.items(m, probe)
                common = sorted(set(a) & set(b))
                paired = stats.mcnemar_exact([a[q] for q in common], [b[q] for q in common], alpha=self.alpha,
                                             metric=m.metric)
                rows.append(Row(probe.position, probe.label, ref.label, m.metric, paired.verdict, paired.describe(),
                                paired.as_dict(), na + nb))
                continue
            cmp, new = self.compare_samples(m, ref, probe, top)
            rows.append(Row(probe.position, probe.label, ref.label, m.metric, cmp.verdict, cmp.describe(),
                            cmp.as_dict(), new, self.claims_for(probe.entry_id, m.metric, cmp)))
        return rows
