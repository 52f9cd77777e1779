"""On real vLLM source from PyPI sdists (the `pypi` source): release repo, apply, refresh, shipped series."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, SeriesDir, git

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def releases(vpatch_cache):
    """The cached release repo with v0.28.0 and v0.29.0 (built once, reused by every test and run)."""
    import os

    os.environ["VPATCH_CACHE"] = str(vpatch_cache)
    from vpatch.manager.sources import PypiSource

    src = PypiSource("pypi")
    shas = {v: src.ensure(v) for v in ("v0.29.0", "v0.28.0")}  # out of order on purpose
    return src, shas


def test_release_commits_are_stable_roots(releases, tmp_path, monkeypatch):
    """Each release is a root commit whose sha depends only on its sdist: cached in another order, in another
    cache, it gets the same sha (the old chained scheme moved v0.29.0 when v0.28.0 was added)."""
    src, shas = releases
    repo = src.repo()
    for v in ("v0.28.0", "v0.29.0"):
        assert git(repo, "rev-parse", v) == shas[v]
        assert git(repo, "rev-list", "--count", v) == "1"
        assert src.release_commit(v[1:], git(repo, "rev-parse", f"{v}^{{tree}}")) == shas[v]
    # a second cache that receives the same trees in the other order (no download: a local fetch of the trees)
    from vpatch.manager import sources

    def from_first_cache(package, version, tmp, progress=None):
        out = tmp / "tree"
        out.mkdir()
        tar = subprocess.run(["git", f"--git-dir={repo}", "archive", f"v{version}"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(out)], input=tar.stdout, check=True)
        return out

    monkeypatch.setattr(sources, "download_sdist_tree", from_first_cache)
    monkeypatch.setenv("VPATCH_CACHE", str(tmp_path / "other-cache"))
    other = sources.PypiSource("pypi")
    assert {v: other.ensure(v) for v in ("v0.28.0", "v0.29.0")} == shas


def _vllm_patch(repo: Path, tmp: Path) -> str:
    """A real one-line change to v0.28.0's vllm/envs.py, as a format-patch."""
    work = tmp / "edit"
    git(tmp, "clone", "-q", "--no-checkout", str(repo), str(work))
    git(work, "checkout", "-q", "-b", "edit", "v0.28.0")
    text = (work / "vllm/envs.py").read_text()
    assert "VLLM_ROCM_USE_AITER" in text
    (work / "vllm/envs.py").write_text(text.replace("import os\n", "import os\n# gfx11 fork marker\n", 1))
    git(work, "commit", "-q", "-am", "envs: mark the gfx11 fork")
    return git(work, "format-patch", "-1", "--stdout", "--zero-commit", "--no-signature", "HEAD") + "\n"


def test_apply_refresh_on_real_vllm(releases, tmp_path, vp, vpatch_cache):
    src, shas = releases
    s = SeriesDir(tmp_path / "fork", "v0.28.0", "pypi")
    s.add_patch("marker", _vllm_patch(src.repo(), tmp_path))
    s.add_overlay("kernel", {"csrc/rocm/gfx11_marker.cuh": "#pragma once\n"})
    env = {"VPATCH_CACHE": str(vpatch_cache)}
    before = s.snapshot()
    r = vp(s.root, "--json", "apply", env=env)
    assert r.rc == 0, r.err
    assert [x["result"] for x in r.json["done"]] == ["clean", "clean"]
    ws = s.root / ".vpatch" / "vllm"
    assert "# gfx11 fork marker" in (ws / "vllm/envs.py").read_text()
    assert git(ws, "rev-parse", "refs/vpatch/base") == shas["v0.28.0"]
    assert vp(s.root, "--json", "refresh", "--all", env=env).json["unchanged"]
    assert s.snapshot() == before
    # the same series onto v0.29.0: a second branch in the same workspace
    r = vp(s.root, "--json", "apply", "--base", "v0.29.0", env=env)
    assert r.rc == 0, r.err
    assert r.json["branch"] == "vpatch/v0.29.0"
    assert {x["result"] for x in r.json["done"]} <= {"clean", "3-way"}
    st = vp(s.root, "--json", "status", env=env).json
    assert st["workspace_base"] == "v0.29.0" and all(e["sync"] == "in-sync" for e in st["entries"])


def test_shipped_series_readme_command(releases, tmp_path, vp, vpatch_cache):
    """README command 1: the shipped series applied onto v0.28.0 from the pypi source, then status."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    # the working tree may hold entries not committed yet while developing: test what is here
    for d in ("patches", "overlay"):
        shutil.rmtree(clone / d)
        shutil.copytree(REPO_ROOT / d, clone / d)
    env = {"VPATCH_CACHE": str(vpatch_cache)}
    assert vp(clone, "lint", env=env).rc == 0
    before = {p: p.read_bytes() for d in ("patches", "overlay") for p in (clone / d).rglob("*") if p.is_file()}
    r = vp(clone, "--json", "apply", env=env)
    assert r.rc == 0, r.err
    d = r.json
    assert "qwen3-omni-router-fix" in d["merged"] and "v0.20.0" in d["merged"]["qwen3-omni-router-fix"]
    assert all(x["result"] == "clean" for x in d["done"]), d["done"]
    st = vp(clone, "--json", "status", env=env).json
    states = {e["id"]: e["state"] for e in st["entries"]}
    assert states["qwen3-omni-router-fix"] == "merged"
    assert all(v == "applied" for k, v in states.items() if k != "qwen3-omni-router-fix")
    assert vp(clone, "refresh", "--all", env=env).rc == 0
    after = {p: p.read_bytes() for d in ("patches", "overlay") for p in (clone / d).rglob("*") if p.is_file()}
    assert after == before
