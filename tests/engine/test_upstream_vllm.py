"""check / rebase / drift on real vLLM from the pypi source (v0.28.0, v0.29.0, v0.31.0), with the shipped
entries (copied into a tmp series; a test is skipped when an entry's patch file is not written yet)."""
from __future__ import annotations

import shutil
import sys
import tomllib

import pytest

from conftest import REPO_ROOT, git
from test_series_part1 import fork28, part1_cache, release_repo, runtime28  # noqa: F401,F811 (fixtures)

pytestmark = pytest.mark.vllm

SHARED = "shared-experts-stream-gate"
MROPE = "mrope-cos-sin-cache"


@pytest.fixture
def shipped(tmp_path, vpatch_cache):
    """A copy of the shipped series (patches/, overlay/) in a tmp dir; entries without files are dropped."""
    root = tmp_path / "fork"
    shutil.copytree(REPO_ROOT / "patches", root / "patches", ignore=shutil.ignore_patterns(".resolutions"))
    if (REPO_ROOT / "overlay").is_dir():
        shutil.copytree(REPO_ROOT / "overlay", root / "overlay")
    else:
        (root / "overlay").mkdir()
    ids = [e["id"] for e in tomllib.loads((root / "patches" / "series.toml").read_text())["entry"]]
    for need in (SHARED, MROPE):
        if need not in ids or not (root / "patches" / f"{need}.patch").exists():
            pytest.skip(f"the shipped entry {need} (patches/{need}.patch) is not written yet")
    return root, {"VPATCH_CACHE": str(vpatch_cache)}


def _only(root, keep):
    """Keep only the entries ``keep`` in the copied series (the rebase test moves the part-1 entries)."""
    import tomlkit

    p = root / "patches" / "series.toml"
    doc = tomlkit.parse(p.read_text())
    aot = tomlkit.aot()
    for t in doc["entry"]:
        if t["id"] in keep:
            aot.append(t)
    doc["entry"] = aot
    p.write_text(tomlkit.dumps(doc))


def test_check_v029_finds_shared_experts_upstream(shipped, vp):
    root, env = shipped
    r = vp(root, "--json", "check", "--onto", "v0.29.0", env=env)
    assert r.rc in (0, 1), r.err
    e = {x["id"]: x for x in r.json["entries"]}
    assert e[SHARED]["status"] == "already-upstream"
    assert e[SHARED]["how"] != "declared"          # found by vpatch, not by declaration
    assert e[SHARED]["how"] == "3-way-noop"         # v0.29.0 made the same edit, with new context around it
    assert e[MROPE]["status"] == "clean"
    assert e["qwen3-omni-router-fix"]["how"] == "declared"
    # the rest applies
    assert all(x["status"] in ("clean", "3-way", "already-upstream") for x in r.json["entries"]), r.json
    assert r.rc == 0
    h = vp(root, "check", "--onto", "v0.29.0", env=env)
    assert h.rc == 0 and "nothing needs a human" in h.out


def test_check_v031_mrope(shipped, vp):
    root, env = shipped
    r = vp(root, "--json", "check", "--onto", "v0.31.0", env=env)
    assert r.rc in (0, 1, 2), r.err
    e = {x["id"]: x for x in r.json["entries"]}
    # textually the MRoPE entry still applies cleanly on v0.31.0 (mrope.py changed by ~140 lines around it);
    # that v0.31.0's forward_hip bypasses its cache is for its effect check (`--checks`) to say
    assert e[MROPE]["status"] == "clean"
    assert (e[SHARED]["status"], e[SHARED]["how"]) == ("already-upstream", "reverse-apply")


def test_rebase_onto_v029(shipped, vp):
    root, env = shipped
    _only(root, {"qwen3-omni-router-fix", MROPE, SHARED})
    r = vp(root, "--json", "rebase", "--onto", "v0.29.0", env=env)
    assert r.rc == 0, r.out[-3000:] + r.err[-3000:]
    rb = r.json["rebase"]
    assert SHARED in rb["recorded_merged"]
    t = tomllib.loads((root / "patches" / "series.toml").read_text())
    assert t["series"]["base"] == "v0.29.0"
    assert {x["id"]: x.get("upstream") for x in t["entry"]}[SHARED] == {"merged": "v0.29.0"}
    # the moved series applies cleanly on v0.29.0 and nothing needs a human there
    a = vp(root, "--json", "apply", "--reset", env=env)
    assert a.rc == 0, a.err
    assert [d["result"] for d in a.json["done"]] == ["clean"]
    assert SHARED in a.json["merged"]
    c = vp(root, "--json", "check", "--onto", "v0.29.0", env=env)
    assert c.rc == 0 and c.json["entries"][2]["how"] == "declared"


def test_drift_on_real_v028_history(shipped, tmp_path, vp, monkeypatch, vpatch_cache):
    root, env = shipped
    monkeypatch.setenv("VPATCH_CACHE", str(vpatch_cache))
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from bench_drift import vllm_history

    from vpatch.manager.series import load_series

    repo = tmp_path / "upstream.git"
    base, shas = vllm_history(repo, load_series(root / "patches" / "series.toml"), 1000)
    git(repo, "tag", "v0.28.0-next", shas[-1])
    p = root / "patches" / "series.toml"
    p.write_text(p.read_text().replace('source = "pypi"', f'source = "{repo}"'))
    r = vp(root, "--json", "drift", "--from", "v0.28.0", "--to", "v0.28.0-next", env=env)
    assert r.rc == 0, r.err
    d = r.json
    assert d["commits"] == 1000 and d["scan_s"] < 60
    e = {x["id"]: x for x in d["entries"]}
    assert e[SHARED]["breaks_at"]["commit"] == shas[666]
    assert (e[SHARED]["breaks_at"]["status"], e[SHARED]["breaks_at"]["how"]) == ("already-upstream", "patch-id")
    assert e[MROPE]["conflicts_at"]["commit"] == shas[900]
    assert shas[900] in [x["commit"] for x in e[MROPE]["touched_hunks"]]


def test_drift_pypi_walks_every_release_in_the_range(shipped, vp):
    """`drift --source pypi` fetches the releases between --from and --to (v0.30.0 is not otherwise cached)
    and walks them in version order, so a break is blamed on the release that brought it."""
    root, env = shipped
    r = vp(root, "--json", "drift", "--from", "v0.28.0", "--to", "v0.31.0", env=env)
    assert r.rc == 0, r.err
    d = r.json
    assert d["releases"] == ["v0.29.0", "v0.30.0", "v0.31.0"] and d["commits"] == 3
    e = {x["id"]: x for x in d["entries"]}
    assert e[SHARED]["breaks_at"]["subject"].startswith("vllm 0.29.0")
    assert e[SHARED]["breaks_at"]["status"] == "already-upstream"


@pytest.mark.venv
def test_check_checks_v031_mrope_has_no_effect(runtime28, fork28, vp, vpatch_cache):
    """`check --onto v0.31.0 --checks` (no --python) runs the effect checks in the workspace's runtime: the
    MRoPE entry applies cleanly as text, but v0.31.0's forward paths bypass its cache."""
    r = vp(fork28, "--json", "check", "--onto", "v0.31.0", "--checks", env={"VPATCH_CACHE": str(vpatch_cache)})
    assert r.rc == 1, r.out[-3000:] + r.err[-3000:]
    e = {x["id"]: x for x in r.json["entries"]}
    assert e[MROPE]["status"] == "applies-but-no-effect", e[MROPE]
    assert e[MROPE]["checks"][0]["result"] == "fail" and e[MROPE]["effect"] == "missing"
    assert "python-only runtime" in r.json["effect_checks"]
    # an entry found upstream is confirmed by its check where it has one
    assert e[SHARED]["status"] == "already-upstream" and e[SHARED]["effect"] in ("confirmed", "missing")
