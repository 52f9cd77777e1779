"""`vpatch verify` and the python-only runtime it runs checks in.

Fast tests run the command for real on a small project applied by `vpatch apply` (checks run with
`--python`, so no vLLM install); `venv` tests run it on real vLLM v0.28.0 with the shipped series
(fixtures from tests/engine/test_series_part1.py, built once under $VPATCH_CACHE).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import git, lines, make_patch, SeriesDir
from test_series_part1 import FILES, fork28, part1_cache, release_repo, runtime28  # noqa: F401 (fixtures)

from vpatch.manager import runtime_env
from vpatch.manager.verify import check_argv

CHECK_OK = """\
import os, sys
assert sys.argv[1] == os.environ["VPATCH_WORKSPACE"], sys.argv
assert os.getcwd() == os.environ["VPATCH_WORKSPACE"]
assert os.environ["VPATCH_ENTRY"] == "good"
assert os.environ.get("GOOD_GATE") == "1"
assert open(os.path.join(sys.argv[1], "src/a.py")).read().count("fast") == 1, "entry not in the tree"
print("covers: the effect of good")
print("PASS")
"""
CHECK_BAD = """\
import sys
for i in range(50):
    print("detail line", i)
print("FAIL: the effect is gone")
sys.exit(3)
"""


@pytest.fixture
def project(tmp_path, upstream, vp):
    """A fork of a small project, applied onto v1.0.0: entries with passing, failing, slow and no
    checks, one merged upstream before the base, one not applied (after --upto)."""
    s = SeriesDir(tmp_path / "fork dir", "v1.0.0", str(upstream.path))  # a space in the path on purpose
    (s.root / "patches" / "checks").mkdir()
    (s.root / "patches" / "checks" / "good.py").write_text(CHECK_OK)
    (s.root / "patches" / "checks" / "bad.py").write_text(CHECK_BAD)
    a, b = lines(30, "a"), lines(30, "b")
    s.add_patch("good", make_patch(upstream, {"src/a.py": a.replace("a 5\n", "a 5 fast\n")}, "a: fast"),
                'gate = { GOOD_GATE = "1" }\nchecks = ["{python} {series_dir}/checks/good.py {workspace}"]\n')
    s.add_patch("bad", make_patch(upstream, {"src/b.py": b.replace("b 3\n", "b 3 x\n")}, "b: x"),
                'checks = ["{python} {series_dir}/checks/bad.py"]\n')
    s.add_patch("quiet", make_patch(upstream, {"src/b.py": b.replace("b 20\n", "b 20 y\n")}, "b: y"))
    s.add_patch("slow", make_patch(upstream, {"src/a.py": a.replace("a 25\n", "a 25 z\n")}, "a: z"),
                """checks = ["{python} -c 'import time; print(\\"started\\", flush=True); time.sleep(60)'"]\n""")
    s.add_patch("old", make_patch(upstream, {"README": "old\n"}, "readme"),
                'upstream = { merged = "v0.9.0" }\nchecks = ["{python} -c \'raise SystemExit(5)\'"]\n')
    s.add_patch("later", make_patch(upstream, {"src/a.py": a.replace("a 29\n", "a 29 w\n")}, "a: w"),
                'checks = ["{python} -c \'raise SystemExit(6)\'"]\n')
    r = vp(s.root, "--json", "apply", "--upto", "old")
    assert r.rc == 0, r.err
    return s


def verify_json(vp, s, *args, rc=None):
    r = vp(s.root, "--json", "verify", "--python", sys.executable, "--timeout", "3", *args)
    if rc is not None:
        assert r.rc == rc, r.err + r.out
    return r, json.loads(r.out)


def test_verify_reports_pass_fail_skipped(project, vp):
    r, d = verify_json(vp, project, rc=1)
    res = {e["id"]: e for e in d["entries"]}
    assert [e["id"] for e in d["entries"]] == ["good", "bad", "quiet", "slow", "old", "later"]
    assert res["good"]["result"] == "pass"
    assert res["bad"]["result"] == "fail" and "exit 3" in res["bad"]["reason"]
    tail = res["bad"]["checks"][0]["output_tail"]
    assert tail[-1] == "FAIL: the effect is gone" and "detail line 49" in tail and "detail line 0" not in tail
    assert Path(res["bad"]["checks"][0]["log"]).read_text().count("detail line") == 50
    assert res["quiet"] == {**res["quiet"], "result": "skipped", "reason": "no checks"}
    assert res["slow"]["result"] == "fail" and res["slow"]["checks"][0]["timed_out"]
    assert res["slow"]["checks"][0]["output_tail"] == ["started"]
    assert res["old"]["result"] == "skipped" and "merged upstream in v0.9.0" in res["old"]["reason"]
    assert res["later"]["result"] == "skipped" and "not applied" in res["later"]["reason"]
    assert d["counts"] == {"pass": 1, "fail": 2, "skipped": 3}
    assert d["base"] == "v1.0.0" and d["runtime"]["python"] == sys.executable
    # commits are the workspace's entry commits
    ws = project.root / ".vpatch" / "vllm"
    assert git(ws, "log", "-1", "--format=%(trailers:key=Vpatch-Entry,valueonly)", res["good"]["commit"]) == "good"


def test_verify_selected_ids_and_exit_status(project, vp):
    r, d = verify_json(vp, project, "good", "quiet", rc=0)
    assert [(e["id"], e["result"]) for e in d["entries"]] == [("good", "pass"), ("quiet", "skipped")]
    r, d = verify_json(vp, project, "later", rc=0)
    assert d["entries"][0]["result"] == "skipped"


def test_verify_human_output_shows_the_failing_lines(project, vp):
    r = vp(project.root, "verify", "--python", sys.executable, "--timeout", "3", "bad", "good")
    assert r.rc == 1
    assert "FAIL: the effect is gone" in r.out and "exited 3" in r.out
    assert "1 passed, 1 failed, 0 skipped" in r.out


def test_verify_unknown_id_is_one_line_error(project, vp):
    r = vp(project.root, "--json", "verify", "--python", sys.executable, "nope")
    assert r.rc != 0
    d = json.loads(r.out)
    assert "nope" in d["error"] and "good" in d["hint"]


def test_verify_without_workspace_or_base_ref(tmp_path, upstream, vp):
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(upstream.path))
    r = vp(s.root, "--json", "verify", "--python", sys.executable)
    assert r.rc == 1 and "vpatch apply" in json.loads(r.out)["hint"]
    plain = tmp_path / "plain"
    plain.mkdir()
    git(plain, "init", "-q")
    git(plain, "commit", "-q", "--allow-empty", "-m", "x")
    r = vp(s.root, "--json", "--workspace", str(plain), "verify", "--python", sys.executable)
    assert r.rc == 1 and "refs/vpatch/base" in json.loads(r.out)["error"]


def test_check_argv_substitutes_after_splitting():
    argv = check_argv("{python} {series_dir}/checks/x.py --ws={workspace} 'a b'",
                      python="/v env/bin/python", series_dir=Path("/s d/patches"), workspace=Path("/w s"))
    assert argv == ["/v env/bin/python", "/s d/patches/checks/x.py", "--ws=/w s", "a b"]


# --- runtime_env without installing ------------------------------------------------------------
def fake_vllm_tree(path: Path, version: str | None = "0.28.0") -> Path:
    (path / "vllm").mkdir(parents=True)
    (path / "vllm" / "__init__.py").write_text("")
    (path / "setup.py").write_text("raise SystemExit('not for running here')\n")
    (path / "requirements").mkdir()
    (path / "requirements" / "common.txt").write_text("-r extra.txt\nnumpy\n")
    (path / "requirements" / "extra.txt").write_text("regex\n")
    if version:
        (path / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    return path


def test_workspace_version_sources(tmp_path):
    assert runtime_env.workspace_vllm_version(fake_vllm_tree(tmp_path / "a")) == "0.28.0"
    b = fake_vllm_tree(tmp_path / "b", version=None)
    (b / "vllm" / "_version.py").write_text("__version__ = version = '0.31.0'\n")
    assert runtime_env.workspace_vllm_version(b) == "0.31.0"
    c = fake_vllm_tree(tmp_path / "c", version=None)
    git(c, "init", "-q")
    git(c, "add", "-A")
    git(c, "commit", "-q", "-m", "x")
    git(c, "tag", "v0.19.0")
    git(c, "commit", "-q", "--allow-empty", "-m", "entry")
    assert runtime_env.workspace_vllm_version(c) == "0.19.0"
    assert runtime_env.workspace_vllm_version(fake_vllm_tree(tmp_path / "d", version=None)) == "0.0.0+vpatch"


def test_requirements_digest_follows_includes(tmp_path):
    ws = fake_vllm_tree(tmp_path / "ws")
    d1 = runtime_env.requirements_digest(ws)
    (ws / "requirements" / "extra.txt").write_text("regex>=2024\n")
    assert runtime_env.requirements_digest(ws) != d1


def test_default_venv_dir_is_per_workspace(tmp_path):
    a = runtime_env.default_venv_dir(tmp_path / ".vpatch", tmp_path / "ws" / "vllm")
    assert a == runtime_env.default_venv_dir(tmp_path / ".vpatch", tmp_path / "ws" / "vllm")
    assert a.parent == tmp_path / ".vpatch" / "runtime" and a.name.startswith("vllm-")
    assert a != runtime_env.default_venv_dir(tmp_path / ".vpatch", tmp_path / "other" / "vllm")


def test_install_leaves_the_workspace_clean(tmp_path):
    ws = fake_vllm_tree(tmp_path / "ws")
    (ws / "vllm" / "_version.py").write_text("__version__ = '0.28.0'\n")
    (ws / "notes.txt").write_text("mine\n")
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "base")
    (ws / "notes.txt").write_text("my uncommitted edit\n")  # the user's: must survive
    before = runtime_env._status(ws)
    # what an editable install writes
    (ws / "vllm" / "_version.py").write_text("__version__ = '0.28.0'\ncommit_id = None\n")
    (ws / "vllm.egg-info").mkdir()
    (ws / "vllm.egg-info" / "PKG-INFO").write_text("x")
    touched = runtime_env._keep_workspace_clean(ws, before)
    assert "vllm/_version.py" in touched
    assert (ws / "vllm" / "_version.py").read_text() == "__version__ = '0.28.0'\n"
    assert (ws / "notes.txt").read_text() == "my uncommitted edit\n"
    assert git(ws, "status", "--porcelain") == "M notes.txt"
    assert "/vllm.egg-info/" in (ws / ".git" / "info" / "exclude").read_text()


def test_ensure_runtime_reuses_a_stamped_venv_without_running_anything(tmp_path, monkeypatch):
    ws = fake_vllm_tree(tmp_path / "ws")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    runtime_env.write_json(venv / runtime_env.STAMP, {
        "recipe": runtime_env.RECIPE, "base_done": True, "vllm_done": True, "workspace": str(ws.resolve()),
        "vllm_version": "0.28.0", "requirements": runtime_env.requirements_digest(ws)})

    def boom(*a, **k):
        raise AssertionError("no process may run for a stamped runtime")

    monkeypatch.setattr(subprocess, "Popen", boom)
    monkeypatch.setattr(subprocess, "run", boom)
    assert runtime_env.ensure_runtime(ws, venv) == venv.resolve() / "bin" / "python"


def test_ensure_runtime_redoes_only_the_vllm_install_when_the_workspace_changed(tmp_path, monkeypatch):
    ws = fake_vllm_tree(tmp_path / "ws")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    runtime_env.write_json(venv / runtime_env.STAMP, {
        "recipe": runtime_env.RECIPE, "base_done": True, "vllm_done": True, "workspace": str(ws.resolve()),
        "vllm_version": "0.27.0", "requirements": "old"})
    ran = []

    def fake_run_logged(argv, **kw):
        ran.append(argv)

    monkeypatch.setattr(runtime_env, "_run_logged", fake_run_logged)
    real_run = subprocess.run

    def fake_run(argv, *a, **k):
        if argv[0] == "git":
            return real_run(argv, *a, **k)
        return subprocess.CompletedProcess(argv, 0, "2.13.0+cpu\n", "")  # the torch version probe

    monkeypatch.setattr(subprocess, "run", fake_run)
    runtime_env.ensure_runtime(ws, venv)
    assert len(ran) == 1 and ran[0][-3:] == ["-e", str(ws.resolve()), "--no-build-isolation"]
    assert "-c" in ran[0]  # torch stays pinned by the constraints file
    stamp = runtime_env.runtime_info(venv)
    assert stamp["vllm_version"] == "0.28.0" and stamp["requirements"] == runtime_env.requirements_digest(ws)


def test_ensure_runtime_refuses_a_tree_that_is_not_vllm(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(runtime_env.RuntimeEnvError, match="does not look like a vLLM source tree"):
        runtime_env.ensure_runtime(tmp_path / "x", tmp_path / "venv")


# --- venv: on real vLLM v0.28.0 with the shipped series ---------------------------------------
@pytest.mark.venv
def test_verify_passes_on_v0_28_and_skips_the_router_fix(fork28, runtime28, vp):  # noqa: F811
    env = {"VPATCH_CACHE": str(fork28.parent.parent)}
    r = vp(fork28, "--json", "verify", env=env)
    assert r.rc == 0, r.err[-3000:] + r.out[-3000:]
    d = json.loads(r.out)
    res = {e["id"]: e for e in d["entries"]}
    assert res["mrope-cos-sin-cache"]["result"] == "pass"
    assert res["shared-experts-stream-gate"]["result"] == "pass"
    router = res["qwen3-omni-router-fix"]
    assert router["result"] == "skipped" and "merged upstream in v0.20.0" in router["reason"]
    assert d["runtime"]["python"] == str(runtime28)
    assert d["runtime"]["vllm_version"] == "0.28.0"


@pytest.mark.venv
def test_verify_catches_an_entry_that_no_longer_takes_effect(fork28, runtime28, vp):  # noqa: F811
    """The MRoPE commit stays applied, but its effect is undone in the tree: verify must fail it."""
    ws = fork28 / ".vpatch" / "vllm"
    rel = FILES["mrope-cos-sin-cache"]
    original = (ws / rel).read_text()
    (ws / rel).write_text(git(ws, "show", f"refs/vpatch/base:{rel}") + "\n")
    try:
        r = vp(fork28, "--json", "verify", "mrope-cos-sin-cache", env={"VPATCH_CACHE": str(fork28.parent.parent)})
        assert r.rc == 1, r.err[-3000:]
        d = json.loads(r.out)
        e = d["entries"][0]
        assert e["result"] == "fail" and d["dirty"]
        assert any("48 cos_sin_cache gathers" in line for line in e["checks"][0]["output_tail"])
    finally:
        (ws / rel).write_text(original)
    assert git(ws, "status", "--porcelain") == ""
