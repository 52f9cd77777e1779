"""`vpatch validate`: measure each prefix where results are missing, compare, check claims.

Flow per metric, for each probe prefix k against its reference (the previous prefix, the base, or a
named entry): an :class:`~vpatch.validation.sampling.AdaptiveComparison` asks for boots in interleaved
order (A B B A …), each measured and stored at once (a crash loses at most the boot in flight).

**Reuse without lying.** A stored boot is evidence about *its own period*: drift between periods does
not cancel unless both sides of a pair were measured back to back. So every boot measured for a
comparison is tagged with that comparison (reference tree, probe tree, run configuration, gate) and
its place in the sequence, and only those boots are replayed into it. A second run over the same
trees and configuration therefore measures nothing new and prints the same verdict; but the boots of
prefix k−1 measured while comparing k−1 with k−2 are never replayed as partners of prefix k (they were
taken a comparison earlier, maybe hours apart: under a drift of 0.1 % per boot the 2nd–4th
comparisons of a chain had 9–13 % false positives that way). They still answer "was this prefix
measured?" and show in reports; ``stored_boots`` counts them. Accuracy is measured once per tree and compared per question with
McNemar's exact test.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence

from vpatch.manager.prefixes import Prefix
from vpatch.manager.series import Series

from . import stats
from .sampling import AdaptiveComparison
from .host import host_fingerprint
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
    max_boots: int = 16
    alpha: float = 0.01
    on_boot: Callable[[str], None] | None = None
    measured: int = 0
    # the cpu target: entry id -> why its change cannot show there; the engine fingerprint of a prefix
    not_measurable: Mapping[str, str] = field(default_factory=dict)
    engine: Callable[[Prefix], Mapping] | None = None
    # commit -> the base it sits on, where it is not ``base`` (the nightly's last good top, on the old release)
    base_of: Mapping[str, str] = field(default_factory=dict)

    def _ctx(self, p: Prefix, chash: str, content: Mapping, top: bool = False) -> RunContext:
        eng = self.engine(p) if self.engine else {}
        return RunContext(tree=p.tree, base=self.base_of.get(p.commit or "", self.base), config_hash=chash, config_content=dict(content),
                          entry_id=p.entry_id, prefix_index=p.position, gate=self.gate, label=p.label, top=top,
                          host=host_fingerprint(), versions=eng.get("versions"))

    def _extra(self, p: Prefix, **more) -> dict | None:
        eng = self.engine(p) if self.engine else {}
        out = {**({"engine": eng["fingerprint"]} if eng.get("fingerprint") else {}), **more}
        return out or None

    def boot_samples(self, m, p: Prefix, chash: str, content: Mapping, top: bool = False,
                     pair: Mapping | None = None) -> list[float]:
        tree = self.materialize(p)
        if self.on_boot:
            self.on_boot(f"{m.metric} boot on {p.label}")
        values = m.boot(tree, env=self.env)
        boot = getattr(m, "last_boot", None)  # the latency runner's server start (ready_s: its boot cost)
        extra = {**(self._extra(p, **({"boot": boot} if boot else {})) or {}), **(dict(pair) if pair else {})}
        self.store.add_samples(self._ctx(p, chash, content, top), m.metric, values, unit=m.unit, boot_id=new_boot_id(),
                               extra=extra or None)
        self.measured += 0 if getattr(m, "reused_boot", False) else 1  # a shared boot is counted once
        return values

    def _paired_boots(self, key: str, trees: Mapping[str, str], metric: str, chash: str) -> list[tuple[str, list[float]]]:
        """The boots measured for comparison ``key`` (both sides), in the order they were measured."""
        found: dict[str, tuple[int, str, list[tuple[int, float]]]] = {}
        for side, tree in trees.items():
            for r in self.store.sample_rows(tree=tree, metric=metric, config_hash=chash, gate=self.gate):
                try:
                    extra = json.loads(r["extra"]) if r.get("extra") else {}
                except ValueError:
                    continue
                if extra.get("comparison") != key or extra.get("side") != side:
                    continue
                seq = int(extra.get("seq", 0))
                found.setdefault(r["boot_id"], (seq, side, []))[2].append((r["run_index"], r["value"]))
        return [(side, [v for _, v in sorted(runs)]) for _, side, runs in sorted(found.values(), key=lambda t: t[0])]

    def stored_boots(self, p: Prefix, metric: str, chash: str) -> int:
        """Boots of ``p`` in the store, whichever comparison measured them (shown, never paired)."""
        return len(self.store.samples(p.tree, metric, chash, self.gate))

    def compare_samples(self, m, ref: Prefix, probe: Prefix, top: Prefix | None = None) -> tuple[stats.Comparison, int]:
        content = m.config_content()
        chash = config_hash(content)
        key = config_hash({"a": ref.tree, "b": probe.tree, "config": chash, "gate": self.gate})
        sampler = AdaptiveComparison(min_boots=self.min_boots, max_boots=self.max_boots, alpha=self.alpha,
                                     lower_is_better=m.lower_is_better, metric=m.metric, unit=m.unit)
        for side, runs in self._paired_boots(key, {"a": ref.tree, "b": probe.tree}, m.metric, chash):
            if sampler.done or side != sampler.next_side():
                break
            sampler.add(side, runs)
        new = 0
        while not sampler.done:
            side = sampler.next_side()
            p = ref if side == "a" else probe
            runs = self.boot_samples(m, p, chash, content, top=top is not None and p.tree == top.tree,
                                     pair={"comparison": key, "side": side, "seq": sampler.boots_used})
            new += 0 if getattr(m, "reused_boot", False) else 1
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
            self.store.add_samples(ctx, m.metric, [100.0 * acc], unit="%", boot_id=boot, extra=self._extra(p))
        n = 0 if getattr(m, "reused_boot", False) else 1
        self.measured += n
        return per_filter[m.filter_name], n

    def outputs(self, m, p: Prefix) -> tuple[list[dict], int]:
        """Greedy outputs of prefix ``p`` (validation/runners/outputs.py): from the store, else one boot.
        Stored as one sample per prompt (value = tokens) whose ``extra`` holds the ids and top logprobs."""
        content = m.config_content()
        chash = config_hash(content)
        rows = self.store.sample_rows(tree=p.tree, metric=m.metric, config_hash=chash, gate=self.gate)
        if rows:
            last = rows[-1]["boot_id"]
            return [json.loads(r["extra"])["output"] for r in rows if r["boot_id"] == last], 0
        tree = self.materialize(p)
        if self.on_boot:
            self.on_boot(f"{m.metric} on {p.label}")
        outs = m.outputs(tree, env=self.env)
        boot = new_boot_id()
        ctx = self._ctx(p, chash, content)
        for o in outs:
            self.store.add_samples(ctx, m.metric, [len(o["token_ids"])], unit=m.unit, boot_id=boot,
                                   first_run_index=int(o["prompt"]), extra=self._extra(p, output=o))
        n = 0 if getattr(m, "reused_boot", False) else 1
        self.measured += n
        return outs, n

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
            out.append({"claim": c.as_dict(), **chk.as_dict()})
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
            if probe.entry_id in self.not_measurable:
                rows.append(Row(probe.position, probe.label, ref.label, m.metric, "not measurable",
                                f"not measurable on cpu: {self.not_measurable[probe.entry_id]}", {}))
                continue
            if m.kind == "outputs":
                from .runners.outputs import compare_outputs

                (a, na), (b, nb) = self.outputs(m, ref), self.outputs(m, probe)
                oc = compare_outputs(a, b)
                rows.append(Row(probe.position, probe.label, ref.label, m.metric, oc.verdict, oc.describe(),
                                oc.as_dict(), na + nb))
                continue
            if m.kind == "items":
                ia, na = self.items(m, ref)
                ib, nb = self.items(m, probe)
                common = sorted(set(ia) & set(ib))
                paired = stats.mcnemar_exact([ia[q] for q in common], [ib[q] for q in common], alpha=self.alpha,
                                             metric=m.metric)
                rows.append(Row(probe.position, probe.label, ref.label, m.metric, paired.verdict, paired.describe(),
                                paired.as_dict(), na + nb))
                continue
            cmp, new = self.compare_samples(m, ref, probe, top)
            rows.append(Row(probe.position, probe.label, ref.label, m.metric, cmp.verdict, cmp.describe(),
                            cmp.as_dict(), new, self.claims_for(probe.entry_id, m.metric, cmp)))
        return rows
