"""The nightly pipeline: rebase → build → validate → compare → bisect → report, built on the verbs.

Each stage runs ``vpatch <verb> --json`` as its own process (exactly what a person would run, with
the same locks, state files and error handling) and reads its JSON. The pipeline's decisions are
pure functions of those documents (:func:`decide_compare`), tested without any of the effects.

Exit codes CI can branch on:
  0  clean: the series moved (or stayed), built, validated, no regression beyond the threshold
  10 drift needs a human: an entry conflicts (and no recorded resolution covers it), is obsolete or applies
     without effect (the drift report says which)
  20 regression found: the culprit (upstream commit or entry) is named in the report
  30 infrastructure failure: a stage failed for a reason other than the above (build, runner, ...)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from vpatch.manager import atomic

CLEAN, DRIFT, REGRESSION, INFRA = 0, 10, 20, 30


@dataclass
class Stage:
    name: str
    argv: list[str]
    rc: int
    data: dict
    seconds: float

    def as_dict(self) -> dict:
        return {"name": self.name, "argv": self.argv, "rc": self.rc, "seconds": round(self.seconds, 2),
                "error": self.data.get("error"), "hint": self.data.get("hint")}


@dataclass
class Nightly:
    root: Path
    series: Path
    workspace: Path | None = None
    env: dict | None = None
    stages: list[Stage] = field(default_factory=list)
    progress: Callable[[str], None] | None = None

    def vp(self, *args: str, timeout: float = 6 * 3600) -> Stage:
        name = args[0] if args[0] != "bisect" or len(args) < 2 or args[1].startswith("-") else f"bisect {args[1]}"
        argv = [sys.executable, "-m", "vpatch.manager.cli.main", "--json", "-q", "--series", str(self.series)]
        if self.workspace:
            argv += ["--workspace", str(self.workspace)]
        argv += list(args)
        if self.progress:
            self.progress(name)
        t0 = time.monotonic()
        r = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(self.env or {})})
        try:
            data = json.loads(r.stdout) if r.stdout.strip() else {}
        except ValueError:
            data = {"error": f"`vpatch {args[0]}` printed no JSON", "stdout": r.stdout[-2000:]}
        if r.returncode != 0 and not data.get("error"):
            data["error"] = (r.stderr.strip().splitlines() or ["failed"])[-1]
        st = Stage(name, argv[argv.index(args[0]):], r.returncode, data, time.monotonic() - t0)
        self.stages.append(st)
        return st


def history_path(state_dir: Path) -> Path:
    return state_dir / "nightly" / "history.json"


def last_good(history: list[dict]) -> dict | None:
    for h in reversed(history):
        if h.get("status") == "clean":
            return h
    return None


def decide_compare(cmp: dict | None, threshold_pct: float) -> str:
    """'regression' when the new top is significantly worse than the last good by more than the
    threshold, 'ok' otherwise (including 'unknown': reported, not acted on)."""
    if not cmp:
        return "ok"
    if cmp["verdict"] == "worse" and abs(cmp["change_pct"]) >= threshold_pct:
        return "regression"
    return "ok"


def names_regression(result: dict | None, lower_is_better: bool = True) -> bool:
    """A bisect result that names the night's regression: found, at or above the threshold, and shifting the
    metric the worse way (pure). A noisy search can 'find' an improvement; that culprit is not the one
    hunted, so the search goes on inside the series."""
    if not result or result.get("status") != "found" or result.get("below_threshold"):
        return False
    shift = float(result.get("shift_pct") or 0.0)
    return shift > 0 if lower_is_better else shift < 0


def named_by_validate(validate: dict | None, metric: str, threshold_pct: float) -> list[dict]:
    """Entries this night's validate found worse than their parent, on ``metric``, by at least the threshold
    (pure). Each such row is a paired comparison of the entry against its parent on the new base, boots
    interleaved (#17's reuse rules), the same question the series bisect would ask again of the same
    pair; a row that is worse but below the threshold, or "unknown", names nothing."""
    named = []
    for doc in (validate or {}).values():
        for row in (doc or {}).get("rows") or []:
            c = row.get("comparison") or {}
            change = c.get("change_pct")
            if row.get("metric") != metric or row.get("verdict") != "worse" or change is None:
                continue
            if abs(float(change)) >= threshold_pct:
                named.append({"entry": row.get("entry"), "reference": row.get("reference"), "change_pct": change,
                              "ci_low_pct": c.get("ci_low_pct"), "ci_high_pct": c.get("ci_high_pct"),
                              "p_value": c.get("p_value"), "boots": [c.get("n_a"), c.get("n_b")],
                              "describe": row.get("describe")})
    return named


def corroborated(cmp: dict | None, named: list[dict], threshold_pct: float) -> bool:
    """A comparison of tops that is not significant on its own still flags the night when its point change is
    worse by at least the threshold and validate's own rows (paired, this night, significant) name an entry
    worse by at least the threshold: two measurements agree on a regression of that size (pure). An entry
    that was already slow last night does not flag every night: the tops then compare near zero."""
    if not cmp or not named or cmp.get("change_pct") is None:
        return False
    change = float(cmp["change_pct"])
    return (change if cmp.get("lower_is_better", True) else -change) >= threshold_pct


def only_conflicts(check: dict) -> bool:
    """True when what needs a human in a check result is only text conflicts (which a recorded resolution may
    cover), not an obsolete entry, a missing effect or broken Python (pure)."""
    entries = check.get("entries") or []
    bad = [e for e in entries if e.get("status") not in ("clean", "3-way", "already-upstream")
           or e.get("effect") == "missing" or e.get("pycheck")]
    return bool(bad) and all(e.get("status") == "conflict" and e.get("effect") != "missing" and not e.get("pycheck")
                             for e in bad)


def mark_replayed(check: dict, replayed: list[str]) -> None:
    """The check said conflict; the rebase resolved them from recorded resolutions: say so in the drift data."""
    for e in check.get("entries") or []:
        if e.get("id") in replayed and e.get("status") == "conflict":
            e["status"] = "resolved"
            e["detail"] = "conflict resolved by a recorded resolution (patches/.resolutions/); " + (e.get("detail") or "")
    if replayed:
        check["resolutions_replayed"] = list(replayed)


ITEMWISE = ("outputs", "gsm8k")  # compared per prefix by validate, not top against last good here


def compare_tops(root: Path, series_path: Path, state_dir: Path, workspace: Path | None, metric: str,
                 last: dict, new: dict, base: str, target: str | None = None) -> dict | None:
    """New top of the stack vs the last good one: boots interleaved in this period (the last good commit
    is checked out again in the prefix worktree), reusing every boot already in the store. When the
    last good commit is gone (an ephemeral runner), the stored boots alone decide."""
    from vpatch.manager.context import Context
    from vpatch.manager.lint import load_checked
    from vpatch.manager.prefixes import Prefix, materialize
    from vpatch.manager.workspace import Workspace
    from vpatch.validation.measure import load_configs, make_measurer
    from vpatch.validation.stats import compare_boots
    from vpatch.validation.store import open_store
    from vpatch.validation.validate import Validator, config_hash

    ctx = Context(series_path=series_path, workspace_path=workspace)
    series = load_checked(series_path)
    vcfg, mcfg = load_configs(ctx.config_path)
    ws = Workspace(ctx.workspace)
    mat, engine = (lambda p: materialize(ws, p)), None
    if target == "cpu":  # each top in its cpu build: vLLM's CPU wheel of its own release + its python tree
        from vpatch.validation.cpu_target import prepare

        cpu = prepare(ctx, ws, vcfg)
        vcfg, mat, engine = cpu.cfg, cpu.materialize, cpu.engine
    m = make_measurer(metric, vcfg, mcfg, series=series)
    old = Prefix(0, "last good nightly", last["top_commit"], last["top_tree"])
    top = Prefix(1, "top", new["top_commit"], new["top_tree"])
    with open_store(state_dir / "results.sqlite") as store:
        if ws.exists() and ws.git.rev(old.commit):
            v = Validator(store, base, series, mat, min_boots=vcfg.boots_min, max_boots=vcfg.boots_max, engine=engine,
                          base_of={old.commit: last.get("base") or base})  # its samples say the release it sat on
            cmp, _ = v.compare_samples(m, old, top)
            return cmp.as_dict()
        chash = config_hash(m.config_content())
        a, b = store.samples(old.tree, metric, chash), store.samples(top.tree, metric, chash)
    if len(a) < 2 or len(b) < 2:
        return None
    return compare_boots(a, b, lower_is_better=m.lower_is_better, metric=metric, paired=False).as_dict()


def run(root: Path, series_path: Path, state_dir: Path, *, upstream: str | None, shard: str | None,
        metrics: list[str], threshold_pct: float, report_dir: Path, build_target: str | None,
        workspace: Path | None = None, progress=None, bisect_budget: int = 120,
        checks: bool = True, bisect: str = "unexplained") -> tuple[int, dict]:
    """``bisect`` "unexplained": bisect only a regression that no entry's own validate row names (see
    :func:`named_by_validate`); "always": bisect every regression, upstream first, then the series."""
    from vpatch.manager.series import load_series
    from vpatch.manager.sources import newest_release, resolve_source

    n = Nightly(root, series_path, workspace, progress=progress)
    series = load_series(series_path)
    store = state_dir / "results.sqlite"
    hist_file = history_path(state_dir)
    history = atomic.read_json(hist_file, []) or []
    out: dict = {"started": time.time(), "series_base": series.base}
    src = resolve_source(series.source, root)
    onto = upstream or (newest_release(getattr(src, "package", "vllm")) if src.kind == "pypi" else series.base)
    out["upstream"] = onto

    def done(code: int, status: str) -> tuple[int, dict]:
        out["status"] = status
        out["exit_code"] = code
        out["stages"] = [s.as_dict() for s in n.stages]
        drift = report_dir / "drift.json"
        if "check" in out:
            atomic.write_json(drift, out["check"])
        args = ["report", "--no-fail", "--store", str(store), "--html", str(report_dir / "report.html"),
                "--markdown", str(report_dir / "summary.md"), "--junit", str(report_dir / "junit.xml"),
                "--title", f"vpatch nightly: {series.base} → {onto} ({status})"]
        if drift.exists():
            args += ["--drift", str(drift)]
        rep = n.vp(*args)
        out["reports"] = {k: str(report_dir / f) for k, f in
                          (("html", "report.html"), ("markdown", "summary.md"), ("junit", "junit.xml"))} if rep.rc == 0 else {}
        out["stages"] = [s.as_dict() for s in n.stages]
        if not shard:  # shards only validate; the final (merging) run writes the night's record
            history.append({"time": out["started"], "upstream": onto, "base": out.get("base", series.base),
                            "top_tree": out.get("top_tree"), "top_commit": out.get("top_commit"), "status": status})
            atomic.write_json(hist_file, history)
        atomic.write_json(report_dir / "nightly.json", out)
        return code, out

    report_dir.mkdir(parents=True, exist_ok=True)
    # 1. where does the series stand on the new upstream?
    if onto != series.base:
        # --checks: an entry that still applies but whose effect check fails upstream is drift, not "clean"
        chk = n.vp("check", "--onto", onto, *(["--checks"] if checks else []))
        out["check"] = chk.data
        if chk.rc == 1 and not only_conflicts(chk.data):
            return done(DRIFT, "drift")
        if chk.rc not in (0, 1):
            return done(INFRA, "infrastructure")
        # conflicts alone may be covered by resolutions recorded in patches/.resolutions/: the rebase replays
        # them and stops only where none applies (then it is drift for a human)
        rb = n.vp("rebase", "--onto", onto)
        out["rebase"] = rb.data
        if rb.rc == 2:
            n.vp("abort")
            return done(DRIFT, "drift")
        if rb.rc != 0:
            return done(INFRA, "infrastructure")
        mark_replayed(out["check"], (rb.data.get("rebase") or {}).get("resolutions_replayed") or [])
    else:
        ap = n.vp("apply")
        if ap.rc == 2:
            n.vp("abort")
            return done(DRIFT, "drift")
        if ap.rc != 0:
            return done(INFRA, "infrastructure")
    st = n.vp("status")
    out["base"] = st.data.get("workspace_base", onto)
    out["top_tree"], out["top_commit"] = st.data.get("tree"), st.data.get("head")
    # 2. build
    if build_target:
        b = n.vp("build", "--target", build_target)
        out["build"] = b.data
        if b.rc != 0:
            return done(INFRA, "infrastructure")
    # 3. validate what has no results yet (the store makes everything else free)
    # (the cpu target measures all metrics in one validate: a boot costs minutes and serves them all)
    for m in ([",".join(metrics)] if build_target == "cpu" else metrics):
        args = ["validate", "--metric", m, "--store", str(store)]
        if build_target == "cpu":
            args += ["--target", "cpu"]
        if shard:
            args += ["--shard", shard]
        v = n.vp(*args)
        out.setdefault("validate", {})[m] = v.data
        if v.rc != 0:
            return done(INFRA, "infrastructure")
    if shard:  # the final job merges the shards, compares and bisects
        return done(CLEAN, "clean")
    # 4. compare the top of the stack with the last good nightly
    lg = last_good(history)
    out["last_good"] = lg
    regression = None
    for m in metrics:
        if m in ITEMWISE:
            continue
        if lg and lg.get("top_tree") and lg["top_tree"] != out["top_tree"]:
            cmp = compare_tops(root, series_path, state_dir, workspace, m, lg, out, out["base"],
                               target="cpu" if build_target == "cpu" else None)
            out.setdefault("compare", {})[m] = cmp
            if decide_compare(cmp, threshold_pct) == "regression":
                regression = m
                break
            if corroborated(cmp, named_by_validate(out.get("validate"), m, threshold_pct), threshold_pct):
                regression = m
                out["regression_basis"] = (
                    f"{m}: the tops compare {float((cmp or {}).get('change_pct') or 0):+.1f} % (not significant on its "
                    f"own: {(cmp or {}).get('verdict')}), and validate's rows name an entry worse by >= {threshold_pct:g} %")
                break
    if regression is None:
        return done(CLEAN, "clean")
    # 5. an entry whose own validate row (this night, against its parent) is worse by the threshold is a
    # culprit already: bisecting would measure the same pairs again. Bisect what validate does not explain.
    assert lg is not None  # a regression is only ever found against a last good nightly
    out["regression"] = regression
    named = named_by_validate(out.get("validate"), regression, threshold_pct)
    out["named_by_validate"] = named
    if named and bisect != "always":
        out["bisect"] = {"skipped": "validate named " + ", ".join(str(n["entry"]) for n in named)
                         + f" (worse by >= {threshold_pct:g} % against its parent, this night); "
                         "upstream commits were not bisected: a regression left after that entry is fixed "
                         "shows in the next night"}
        return done(REGRESSION, "regression")
    # 6. bisect: upstream first (series applied on each upstream commit), then inside the series
    culprits: dict[str, Any] = {}
    # the bisect hunts what the night flagged: shifts of at least the night's threshold
    more = ["--threshold", str(threshold_pct), *(["--target", "cpu"] if build_target == "cpu" else [])]
    if lg["base"] != out["base"]:
        n.vp("bisect", "reset")
        ub = n.vp("bisect", "--upstream", "--good", lg["base"], "--bad", out["base"], "--metric", regression,
                  "--store", str(store), "--budget", str(bisect_budget), *more)
        culprits["upstream"] = ub.data.get("result")
    lower = bool((out.get("compare") or {}).get(regression, {}).get("lower_is_better", True))
    if not names_regression(culprits.get("upstream"), lower):
        n.vp("bisect", "reset")
        sb = n.vp("bisect", "--metric", regression, "--store", str(store), "--budget", str(bisect_budget), *more)
        culprits["series"] = sb.data.get("result")
    out["bisect"] = culprits
    return done(REGRESSION, "regression")
