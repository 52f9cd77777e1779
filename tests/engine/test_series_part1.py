"""Series part 1 on real vLLM source (sdists from the package index, cached under $VPATCH_CACHE):
the router fix, the MRoPE cos/sin cache and the shared-experts stream gate -- where each applies,
and that each entry's check tests the *effect* (passes with the entry, fails without it).

Markers: `vllm` (release repo only, ~20 s the first time), `venv` (python-only installs of vLLM:
~2 min for v0.28.0 and ~3 min for v0.19.0 the first time, then reused from $VPATCH_CACHE).

The session fixtures here (release repo, applied v0.28.0 workspace, runtimes) are imported by
tests/engine/test_verify.py; everything they build lives at fixed paths under $VPATCH_CACHE/part1 and is
reused when still valid, so a second instantiation (or a second CI run with the cache) is fast.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import REPO_ROOT, git, run_vpatch

PATCHES = REPO_ROOT / "patches"
IDS = ("qwen3-omni-router-fix", "mrope-cos-sin-cache", "shared-experts-stream-gate")
VERSIONS = ("v0.19.0", "v0.20.0", "v0.28.0", "v0.29.0", "v0.31.0")
CHECKS = {"qwen3-omni-router-fix": "qwen3_omni_router_fix.py", "mrope-cos-sin-cache": "mrope_cos_sin_cache.py",
          "shared-experts-stream-gate": "shared_experts_stream_gate.py"}
FILES = {"qwen3-omni-router-fix": "vllm/model_executor/models/qwen3_moe.py",
         "mrope-cos-sin-cache": "vllm/model_executor/layers/rotary_embedding/mrope.py",
         "shared-experts-stream-gate": "vllm/model_executor/layers/fused_moe/runner/shared_experts.py"}


def patch_path(eid: str) -> Path:
    return PATCHES / f"{eid}.patch"


# --- fast: the series file and the patch files ------------------------------------------------
def test_series_declares_the_three_entries():
    doc = tomllib.loads((PATCHES / "series.toml").read_text())
    entries = {e["id"]: e for e in doc["entry"]}
    ids = [e["id"] for e in doc["entry"]]
    assert [i for i in ids if i in IDS] == list(IDS)  # in this order
    router, mrope, gate = (entries[i] for i in IDS)
    assert router["area"] == "model" and router["upstream"] == {"merged": "v0.20.0"}
    assert mrope["area"] == "rotary" and mrope["upstream"] == "pending"
    assert gate["area"] == "moe-runner" and gate["upstream"] == "pending"
    c = router["claims"][0]
    assert (c["metric"], c["direction"], c["before"], c["after"], c["unit"]) == ("tpot", "lower", 15.20, 15.11, "ms")
    for eid in IDS:
        assert entries[eid]["checks"] == [f"{{python}} {{series_dir}}/checks/{CHECKS[eid]}"]
        assert (PATCHES / "checks" / CHECKS[eid]).is_file()


@pytest.mark.parametrize("eid", IDS)
def test_patch_files_are_format_patches_of_one_file(eid):
    text = patch_path(eid).read_text()
    assert text.startswith("From 0000000000000000000000000000000000000000 ")
    assert "\nSubject: [PATCH] " in text and "\nFrom: " in text
    touched = [line.split(" b/", 1)[1] for line in text.splitlines() if line.startswith("diff --git ")]
    assert touched == [FILES[eid]]
    # the message says what and why; the router fix keeps its author's measured figure
    body = text.split("\n\n", 1)[1].split("\n---\n", 1)[0]
    assert len(body.split()) > 60
    if eid == "qwen3-omni-router-fix":
        assert "15.20 -> 15.11 ms" in body and "v0.20.0" in body


# --- the release repo and trees of it ----------------------------------------------------------
@pytest.fixture(scope="session")
def part1_cache(vpatch_cache) -> Path:
    os.environ["VPATCH_CACHE"] = str(vpatch_cache)  # for PypiSource in this process
    d = vpatch_cache / "part1"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def release_repo(part1_cache) -> Path:
    from vpatch.manager.sources import PypiSource

    src = PypiSource("pypi")
    for v in VERSIONS:
        src.ensure(v)
    return src.repo()


def apply_check(repo: Path, version: str, *eids: str, three_way: bool = False) -> subprocess.CompletedProcess:
    """`git apply --check` of the entries, in order, onto VERSION -- on a scratch index, no checkout."""
    idx = repo / f"vpatch-test-index-{os.getpid()}"
    env = {**os.environ, "GIT_DIR": str(repo), "GIT_INDEX_FILE": str(idx)}
    try:
        subprocess.run(["git", "read-tree", version], env=env, check=True)
        args = ["git", "apply", "--cached"] + (["--3way"] if three_way else ["--check"])
        return subprocess.run(args + [str(patch_path(e)) for e in eids], env=env, capture_output=True, text=True)
    finally:
        idx.unlink(missing_ok=True)


def tree_at(part1_cache: Path, repo: Path, version: str, eids: tuple[str, ...] = (), name: str | None = None) -> Path:
    """A checkout of VERSION with the entries applied (not committed), cached and reused while valid."""
    name = name or f"{version}+{'+'.join(eids) or 'base'}"
    d = part1_cache / "trees" / name
    key = hashlib.sha256((version + "".join(patch_path(e).read_text() for e in eids)).encode()).hexdigest()
    marker = d / ".vpatch-test-tree"
    if marker.exists() and marker.read_text() == key:
        return d
    if d.exists():
        shutil.rmtree(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    git(d.parent, "clone", "-q", "--shared", "--no-checkout", str(repo), str(d))
    git(d, "checkout", "-q", "--detach", version)
    for e in eids:
        git(d, "apply", "--3way", str(patch_path(e)))
    marker.write_text(key)
    return d


# --- vllm: where each patch applies ------------------------------------------------------------
EXPECTED = {
    # (entry, version): applies with `git apply --check`?
    ("qwen3-omni-router-fix", "v0.19.0"): True,
    ("qwen3-omni-router-fix", "v0.20.0"): False,  # fixed upstream: the block changed
    ("qwen3-omni-router-fix", "v0.28.0"): False,
    ("mrope-cos-sin-cache", "v0.28.0"): True,
    ("mrope-cos-sin-cache", "v0.29.0"): True,
    ("mrope-cos-sin-cache", "v0.31.0"): True,  # applies -- but forward_hip bypasses it (see below)
    ("shared-experts-stream-gate", "v0.28.0"): True,
    ("shared-experts-stream-gate", "v0.29.0"): False,  # upstream changed the same line
}


@pytest.mark.vllm
@pytest.mark.parametrize("eid,version", sorted(EXPECTED))
def test_where_each_patch_applies(release_repo, eid, version):
    r = apply_check(release_repo, version, eid)
    assert (r.returncode == 0) == EXPECTED[(eid, version)], r.stderr


@pytest.mark.vllm
def test_mrope_and_gate_apply_together_on_v0_28(release_repo):
    r = apply_check(release_repo, "v0.28.0", "mrope-cos-sin-cache", "shared-experts-stream-gate")
    assert r.returncode == 0, r.stderr


@pytest.mark.vllm
def test_gate_is_already_in_v0_29_by_three_way(release_repo):
    """v0.29.0 made the same is_cuda -> is_cuda_alike change: a 3-way apply changes nothing."""
    idx = release_repo / f"vpatch-test-index-3w-{os.getpid()}"
    env = {**os.environ, "GIT_DIR": str(release_repo), "GIT_INDEX_FILE": str(idx)}
    try:
        subprocess.run(["git", "read-tree", "v0.29.0"], env=env, check=True)
        before = subprocess.run(["git", "write-tree"], env=env, capture_output=True, text=True).stdout
        r = subprocess.run(["git", "apply", "--cached", "--3way", str(patch_path("shared-experts-stream-gate"))],
                           env=env, capture_output=True, text=True)
        after = subprocess.run(["git", "write-tree"], env=env, capture_output=True, text=True).stdout
    finally:
        idx.unlink(missing_ok=True)
    assert r.returncode == 0, r.stderr
    assert before == after


# --- vllm: vpatch apply of the shipped series onto v0.28.0 -------------------------------------
def apply_reusing(root: Path, args: list[str], env: dict):
    """`vpatch apply` on a fork cached across runs. When the cached workspace has older entries, or was made
    on release commits the pypi source has since re-tagged (old chained scheme -> stable roots), start it
    over from the base with --reset, as vpatch's hint says."""
    r = run_vpatch(root, *args, env=env)
    if r.rc != 0 and ("changed since it was applied" in r.out or "does not match the series" in r.out):
        r = run_vpatch(root, *args, "--reset", env=env)
    return r


@pytest.fixture(scope="session")
def fork28(part1_cache, release_repo) -> Path:
    """The shipped patches/ and overlay/ applied by `vpatch apply --upto shared-experts-stream-gate`
    onto v0.28.0 from the pypi source; returns the fork root (workspace: .vpatch/vllm)."""
    root = part1_cache / "fork28"
    root.mkdir(exist_ok=True)
    for d in ("patches", "overlay"):
        if (root / d).exists():
            shutil.rmtree(root / d)
        if (REPO_ROOT / d).exists():
            shutil.copytree(REPO_ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    args = ["--json", "apply", "--base", "v0.28.0", "--source", "pypi", "--upto", "shared-experts-stream-gate"]
    env = {"VPATCH_CACHE": str(part1_cache.parent)}
    r = apply_reusing(root, args, env)
    assert r.rc == 0, r.err + r.out
    root.joinpath("apply.json").write_text(r.out)
    return root


@pytest.mark.vllm
def test_apply_v0_28_applies_mrope_and_gate_and_skips_router_fix(fork28):
    import json

    data = json.loads((fork28 / "apply.json").read_text())
    results = {d["id"]: d["result"] for d in data["done"]}
    assert set(results) == {"mrope-cos-sin-cache", "shared-experts-stream-gate"}, data
    assert "qwen3-omni-router-fix" in data["merged"] and "v0.20.0" in data["merged"]["qwen3-omni-router-fix"]
    ws = fork28 / ".vpatch" / "vllm"
    trailers = git(ws, "log", "--format=%(trailers:key=Vpatch-Entry,valueonly)", "refs/vpatch/base..HEAD").split()
    assert sorted(trailers) == ["mrope-cos-sin-cache", "shared-experts-stream-gate"]
    assert "_get_cos_sin" in (ws / FILES["mrope-cos-sin-cache"]).read_text()
    assert "current_platform.is_cuda_alike()" in (ws / FILES["shared-experts-stream-gate"]).read_text()


# --- venv: the checks test the effect ----------------------------------------------------------
@pytest.fixture(scope="session")
def runtime28(fork28) -> Path:
    """The python-only runtime of the fork28 workspace, where `vpatch verify` puts it by default."""
    from vpatch.manager.runtime_env import default_venv_dir, ensure_runtime

    ws = fork28 / ".vpatch" / "vllm"
    return ensure_runtime(ws, default_venv_dir(fork28 / ".vpatch", ws))


@pytest.fixture(scope="session")
def runtime19(part1_cache, release_repo) -> tuple[Path, Path]:
    """A v0.19.0 workspace with the router fix as an entry commit, and its python-only runtime."""
    from vpatch.manager.runtime_env import ensure_runtime

    ws = part1_cache / "ws19"
    key = hashlib.sha256(patch_path("qwen3-omni-router-fix").read_bytes()).hexdigest()
    marker = ws / ".git" / "vpatch-test-key"
    if not (marker.exists() and marker.read_text() == key):
        if ws.exists():
            shutil.rmtree(ws)
        build_workspace(release_repo, ws, "v0.19.0", ["qwen3-omni-router-fix"])
        marker.write_text(key)
    py = ensure_runtime(ws, part1_cache / "runtime-ws19")
    return ws, py


def build_workspace(repo: Path, ws: Path, version: str, eids: list[str]) -> None:
    """A vpatch-style workspace by hand: branch vpatch/<version>, refs/vpatch/base, one commit per
    entry carrying its Vpatch-Entry trailer."""
    git(ws.parent, "clone", "-q", "--shared", "--no-checkout", str(repo), str(ws))
    git(ws, "config", "gc.auto", "0")
    git(ws, "checkout", "-q", "-b", f"vpatch/{version}", version)
    git(ws, "update-ref", "refs/vpatch/base", "HEAD")
    for e in eids:
        git(ws, "am", "-q", "--3way", str(patch_path(e)))
        msg = git(ws, "log", "-1", "--format=%B")
        git(ws, "commit", "-q", "--amend", "-m", msg, "--trailer", f"Vpatch-Entry: {e}")


def run_check(python: Path, eid: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if pythonpath is not None:
        # the same runtime, with another tree of the same release first on sys.path: cheaper than a
        # second 2.7 GB install for a tree that differs from the installed one only in python files
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(python), str(PATCHES / "checks" / CHECKS[eid])], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _which_tree(python: Path, pythonpath: Path | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(python), "-c", "import vllm.model_executor, os; print(os.path.dirname("
                           "os.path.dirname(vllm.model_executor.__file__)))"],
                          env=env, capture_output=True, text=True).stdout.strip().splitlines()[-1]


@pytest.mark.venv
@pytest.mark.parametrize("eid", ["mrope-cos-sin-cache", "shared-experts-stream-gate"])
def test_check_passes_on_patched_v0_28(runtime28, fork28, eid):
    ws = fork28 / ".vpatch" / "vllm"
    r = run_check(runtime28, eid, ws)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "PASS" in r.stdout and "cannot cover on CPU:" in r.stdout


@pytest.mark.venv
@pytest.mark.parametrize("eid", ["mrope-cos-sin-cache", "shared-experts-stream-gate"])
def test_check_fails_on_unpatched_v0_28(runtime28, part1_cache, release_repo, eid):
    base = tree_at(part1_cache, release_repo, "v0.28.0")
    assert _which_tree(runtime28, base) == str(base / "vllm")
    r = run_check(runtime28, eid, base, pythonpath=base)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "FAIL" in r.stdout
    if eid == "mrope-cos-sin-cache":
        assert "48 cos_sin_cache gathers" in r.stdout
    else:
        assert "rocm, aux stream present, 1 tokens: order NO_OVERLAP, expected MULTI_STREAM_OVERLAPPED" in r.stdout


@pytest.mark.venv
def test_mrope_check_sees_the_forward_hip_bypass_on_v0_31(runtime28, part1_cache, release_repo):
    """Moved onto v0.31.0 the entry still applies, but ROCm dispatches to the new
    MRotaryEmbedding.forward_hip, whose custom op gathers by itself: the check must fail there."""
    tree = tree_at(part1_cache, release_repo, "v0.31.0", ("mrope-cos-sin-cache",))
    assert "_get_cos_sin" in (tree / FILES["mrope-cos-sin-cache"]).read_text()
    r = run_check(runtime28, "mrope-cos-sin-cache", tree, pythonpath=tree)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    out = r.stdout
    assert "ROCm dispatch with the op enabled picks: MRotaryEmbedding.forward_hip" in out
    assert "forward_native: step 0 (17 tokens x 48 layers): 1 gather(s)" in out
    assert "forward_cuda: step 0 (17 tokens x 48 layers): 1 gather(s)" in out
    assert "ROCm dispatch (MRotaryEmbedding.forward_hip): 48 cos_sin_cache gathers" in out
    assert "torch custom op" in out


@pytest.mark.venv
def test_router_fix_check_on_v0_19(runtime19, part1_cache, release_repo):
    ws, py = runtime19
    r = run_check(py, "qwen3-omni-router-fix", ws)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "runner owns the gate: gate called 1 time(s)" in r.stdout
    base = tree_at(part1_cache, release_repo, "v0.19.0")
    r = run_check(py, "qwen3-omni-router-fix", base, pythonpath=base)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "runner owns the gate: gate called 2 time(s)" in r.stdout
