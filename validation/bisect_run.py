"""The effectful side of `vpatch bisect`: oracles over real prefixes (or upstream commits), the saved
state, and the loop that drives the pure search in :mod:`bisect`.

State lives in ``.vpatch/bisect/state.json`` and is rewritten atomically after every measurement:
the positions (commit + tree of each), the arguments, the search's own JSON and a log of every step.
Killing a bisect loses at most the boot in progress; ``vpatch bisect`` with no arguments resumes.

Two kinds of metric:
- sampled metrics (tpot, ttft, kernel:…, --run CMD): the probabilistic :class:`~.bisect.Bisector`,
  one boot per probe, references re-measured in the same period;
- accuracy (gsm8k): answers are deterministic per prefix, so each prefix is measured once (reused
  from the results store) and compared with the good end per question (McNemar exact); a plain binary
  search on that paired verdict is sound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

from vpatch.manager import atomic
from vpatch.manager import state as vstate
from vpatch.manager.prefixes import Prefix

from . import stats
from .bisect import Bisector, Budget, ProbeFailed, run_bisect
from .host import host_fingerprint
from .store import GATE_NONE, RunContext, Store, new_boot_id
from .validate import config_hash

COMPILED = ("csrc", "CMakeLists.txt", "cmake", "setup.py")


@dataclass
class SeriesOracle:
    """Position i = ``positions[i]`` (a prefix, or the series applied on an upstream commit)."""

    positions: list[Prefix]
    materialize: Callable[[Prefix], Path]
    measurer: Any  # a validation.measure measurer: boot(), config_content(), metric, unit
    store: Store
    base: str
    signature: Callable[[Prefix], str]
    gate: str = GATE_NONE
    env: dict | None = None
    built: set | None = None
    # the cpu target: a position -> its engine ({"versions", "fingerprint"}); where a position's base is not
    # ``base`` (upstream positions: each is its own upstream commit), the base it sits on
    engine: Callable[[Prefix], Mapping] | None = None
    base_of: Callable[[Prefix], str] | None = None

    def build_cost(self, position: int) -> float:
        sig = self.signature(self.positions[position])
        return 0.0 if sig in (self.built or set()) else 1.0

    def measure(self, position: int, n_runs: int) -> list[float]:
        p = self.positions[position]
        try:
            tree = self.materialize(p)
        except Exception as e:  # cannot apply / check out / build: skip like `git bisect skip`
            raise ProbeFailed(f"{p.label}: {e}") from None
        if self.built is None:
            self.built = set()
        self.built.add(self.signature(p))
        values = self.measurer.boot(tree, env=self.env, runs=n_runs)
        content = self.measurer.config_content()
        from vpatch.manager.git import run_git

        eng = self.engine(p) if self.engine else {}
        # the tree measured: the materialized checkout's; a cpu build is no checkout, so then the prefix's own
        # tree, or for an upstream position (the series applied on an upstream commit) the engine's record of it
        # (never ask git from inside a build folder: in a fork that is a git repository it would answer the fork's)
        top = Path(tree) / ".git"
        tree_hash = (run_git("rev-parse", "HEAD^{tree}", cwd=tree, check=False).out if top.exists() else "") \
            or p.tree or eng.get("tree", "")
        ctx = RunContext(tree=tree_hash, base=self.base_of(p) if self.base_of else self.base,
                         config_hash=config_hash(content), config_content=content,
                         entry_id=p.entry_id, prefix_index=p.position, gate=self.gate, label=p.label,
                         host=host_fingerprint(), versions=eng.get("versions"))
        self.store.add_samples(ctx, self.measurer.metric, values, unit=self.measurer.unit, boot_id=new_boot_id(),
                               extra={"engine": eng["fingerprint"]} if eng.get("fingerprint") else None)
        return values


def compiled_signature(git, p: Prefix) -> str:
    """Hash of the compiled sources of a prefix: equal signatures share one build (python-only steps)."""
    parts = []
    for path in COMPILED:
        r = git.run("rev-parse", "-q", "--verify", f"{p.commit}:{path}", check=False)
        parts.append(r.out if r.ok else "-")
    return ",".join(parts)


class BisectState:
    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        """The saved state, validated (a damaged file: one line naming it and `vpatch bisect reset`)."""
        return vstate.read(vstate.BisectRecord, self.path)

    def save(self, state: dict) -> None:
        atomic.write_json(self.path, vstate.stamp(state))

    def reset(self) -> bool:
        if self.path.exists():
            self.path.unlink()
            return True
        return False


def run_sampled(state: dict, st: BisectState, oracle: SeriesOracle, on_step=None) -> dict:
    bis = Bisector.from_json(state["search"]) if state.get("search") else Bisector(
        len(oracle.positions), confidence=state["confidence"], threshold_pct=state["threshold_pct"],
        budget=Budget(max_runs=state.get("max_runs"), max_builds=state.get("max_builds")),
        runs_per_batch=state.get("runs_per_batch"),
        boot_cost_runs=state.get("boot_cost_runs", 1.0))
    oracle.built = set(state.get("built", []))

    def save(search_json: str) -> None:
        state["search"] = search_json
        state["built"] = sorted(oracle.built or [])
        st.save(state)

    def step(probe, samples):
        p = oracle.positions[probe.position]
        state.setdefault("log", []).append({
            "time": time.time(), "position": probe.position, "label": p.label, "tree": p.tree,
            "purpose": probe.purpose, "n_runs": probe.n_runs, "samples": samples,
            "median": sorted(samples)[len(samples) // 2] if samples else None,
            "skipped": samples is None})
        if on_step:
            on_step(probe, samples)

    save(bis.to_json())
    result = run_bisect(bis, oracle, save=save, on_step=step)
    return finish(state, st, result.to_dict(), oracle.positions)


def run_paired(state: dict, st: BisectState, positions: list[Prefix], items_of: Callable[[Prefix], dict[int, bool]],
               alpha: float = 0.01, on_step=None) -> dict:
    """Binary search on 'prefix k answers worse than the good end' (McNemar exact, per question)."""
    good = items_of(positions[0])
    lo, hi = 0, len(positions) - 1
    log = state.setdefault("log", [])

    def worse(k: int) -> stats.Paired:
        b = items_of(positions[k])
        common = sorted(set(good) & set(b))
        return stats.mcnemar_exact([good[q] for q in common], [b[q] for q in common], alpha=alpha, metric="gsm8k")

    end = worse(hi)
    log.append({"time": time.time(), "position": hi, "label": positions[hi].label, "describe": end.describe(),
                "verdict": end.verdict, "p": end.p_value})
    st.save(state)
    if end.verdict != "worse":
        return finish(state, st, {"status": "no_shift", "culprit": None, "reason": f"bad end is not worse: {end.describe()}",
                                  "evidence": end.as_dict()}, positions)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = worse(mid)
        log.append({"time": time.time(), "position": mid, "label": positions[mid].label, "describe": r.describe(),
                    "verdict": r.verdict, "p": r.p_value})
        st.save(state)
        if on_step:
            on_step(mid, r)
        if r.verdict == "worse":
            hi = mid
        elif r.verdict in ("same", "better") or r.p_value > 0.5:
            lo = mid
        else:
            return finish(state, st, {"status": "ambiguous", "culprit": None, "ambiguous_range": [lo + 1, hi],
                                      "reason": f"prefix {positions[mid].label} is neither clearly worse nor the same: {r.describe()}"},
                          positions)
    last = worse(hi)
    # An exact test's p is not the probability that this is the culprit: report it as what it is.
    return finish(state, st, {"status": "found", "culprit": hi, "p_value": last.p_value,
                              "describe": last.describe(), "reason": last.describe()}, positions)


def finish(state: dict, st: BisectState, result: dict, positions: list[Prefix]) -> dict:
    c = result.get("culprit")
    if c is not None:
        result["culprit_label"] = positions[c].label
        result["culprit_commit"] = positions[c].commit
    for key in ("suspects",):
        if result.get(key):
            result[key] = [{"position": k, "label": positions[k].label, "p": p} for k, p in result[key]]
    if result.get("ambiguous_range"):
        a, b = result["ambiguous_range"]
        result["ambiguous_labels"] = [positions[a].label, positions[b].label]
    state["result"] = result
    st.save(state)
    return state
