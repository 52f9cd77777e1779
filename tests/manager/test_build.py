"""`vpatch build`: reuse by build-input hash, incremental compiles, records, env checks, kernels.

Fast tests run a lab build command (``[build.command]``) that compiles like make/ninja: every
``csrc/**/*.cu`` whose object is older than its source is "compiled" (its name appended to
``compiled.log`` in the persistent build dir and printed as ninja would), then ``vllm/_C.so`` is
linked from the objects. So the tests count translation units the way a real build does.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SeriesDir, Upstream, git, lines, make_patch, run_vpatch

FAKE_BUILD = r'''
import os, pathlib, sys, time
tree = pathlib.Path(os.environ["VPATCH_BUILD_TREE"])
bd = pathlib.Path(sys.argv[1])
bd.mkdir(parents=True, exist_ok=True)
for src in sorted((tree / "csrc").rglob("*.cu")):
    rel = src.relative_to(tree).as_posix()
    obj = bd / (rel + ".o")
    if not obj.exists() or obj.stat().st_mtime_ns < src.stat().st_mtime_ns:
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(src.read_bytes())
        print(f"[1/1] Building HIP object {rel}.o", flush=True)
        with open(bd / "compiled.log", "a") as f:
            f.write(rel + "\n")
for obj in bd.rglob("*.cu.o"):  # objects of deleted sources go, as with ninja's cleandead
    if not (tree / str(obj.relative_to(bd))[:-2]).exists():
        obj.unlink()
if os.environ.get("FAKE_SLEEP"):
    time.sleep(float(os.environ["FAKE_SLEEP"]))
if os.environ.get("FAKE_FAIL"):
    print("csrc/a.cu:3: error: boom", flush=True)
    sys.exit(2)
objs = sorted(bd.rglob("*.cu.o"))
(tree / "vllm" / "_C.so").write_bytes(b"".join(o.read_bytes() for o in objs))
print("linked vllm/_C.so")
'''


def compiled_log(root: Path) -> list[str]:
    logs = list((root / ".vpatch" / "builds" / "slots").glob("*/rocm/build/compiled.log"))
    return logs[0].read_text().split() if logs else []


@pytest.fixture
def lab(tmp_path):
    """A small vLLM-shaped upstream, a series of python-only and csrc entries, and a lab build recipe."""
    up = Upstream(tmp_path / "upstream")
    up.write("setup.py", "# setup\n")
    up.write("CMakeLists.txt", "project(x)\n")
    up.write("csrc/a.cu", "// a v1\n")
    up.write("csrc/b.cu", "// b v1\n")
    up.write("vllm/__init__.py", "")
    up.write("vllm/x.py", lines(10, "x"))
    up.write("vllm/y.py", lines(10, "y"))
    up.commit("release 1.0.0", tag="v1.0.0")
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(up.path))
    s.add_patch("py1", make_patch(up, {"vllm/x.py": lines(10, "x").replace("x 3\n", "x 3 fast\n")}, "x: fast"))
    s.add_patch("cu1", make_patch(up, {"csrc/a.cu": "// a v2\n"}, "a: v2"))
    s.add_overlay("py2", {"vllm/y.py": lines(10, "y").replace("y 5\n", "y 5 fast\n")})
    s.add_overlay("cu2", {"csrc/c.cu": "// c v1\n"})
    fake = tmp_path / "fakebuild.py"
    fake.write_text(FAKE_BUILD)
    write_config(s.root, fake)
    r = run_vpatch(s.root, "apply")
    assert r.rc == 0, r.err
    s.fake = fake
    return s


def write_config(root: Path, fake: Path, extra: str = "", env: str = "") -> None:
    (root / "vpatch.toml").write_text(
        f'[build]\n{extra}\n[build.command]\nany = [["{{python}}", "{fake}", "{{build_dir}}"]]\n'
        + (f"[build.env]\n{env}\n" if env else ""))


def build(root: Path, *args: str, env: dict | None = None) -> dict:
    r = run_vpatch(root, "--json", "build", "--target", "rocm", *args, env=env)
    assert r.rc == 0, r.err + r.out
    return r.json


def test_walk_reuses_python_only_prefixes_and_compiles_only_changed_units(lab):
    root = lab.root
    d = build(root, "--upto", "base")
    assert d["record"]["action"] == "full" and d["record"]["compiled_units"] == 2
    assert compiled_log(root) == ["csrc/a.cu", "csrc/b.cu"]

    d = build(root, "--upto", "py1")  # python-only: no compile
    assert d["record"]["action"] == "reuse" and d["record"]["compiled_units"] == 0
    assert "compiled-source hash equal; 1 python file differs" in d["plan"]["reason"]
    assert compiled_log(root) == ["csrc/a.cu", "csrc/b.cu"]
    tree = Path(d["record"]["slot"]) / "tree"
    assert "x 3 fast" in (tree / "vllm/x.py").read_text()

    d = build(root, "--upto", "cu1")  # one .cu changed: exactly its translation unit
    assert d["record"]["action"] == "incremental" and d["record"]["compiled_units"] == 1
    assert "csrc/a.cu" in d["plan"]["reason"]
    assert compiled_log(root)[2:] == ["csrc/a.cu"]

    d = build(root, "--upto", "py2")
    assert d["record"]["action"] == "reuse"
    d = build(root)  # HEAD = cu2 adds csrc/c.cu
    assert d["record"]["action"] == "incremental" and compiled_log(root)[3:] == ["csrc/c.cu"]
    assert (tree / "vllm/_C.so").read_bytes() == b"// a v2\n// b v1\n// c v1\n"

    # back to the base: its libraries come from the artefact cache, nothing compiles
    d = build(root, "--upto", "py1")
    assert d["record"]["action"] == "restore" and d["record"]["compiled_units"] == 0
    assert (tree / "vllm/_C.so").read_bytes() == b"// a v1\n// b v1\n"
    assert len(compiled_log(root)) == 4
    # the user's workspace was never touched
    ws = root / ".vpatch" / "vllm"
    assert git(ws, "status", "--porcelain") == ""
    assert git(ws, "rev-parse", "--abbrev-ref", "HEAD") == "vpatch/v1.0.0"


def test_without_artefact_cache_going_back_recompiles_only_what_differs(lab):
    write_config(lab.root, lab.fake, extra="keep_artefacts = 0")
    root = lab.root
    build(root, "--upto", "py1")
    build(root)  # a.cu v2 + c.cu
    assert compiled_log(root) == ["csrc/a.cu", "csrc/b.cu", "csrc/a.cu", "csrc/c.cu"]
    d = build(root, "--upto", "py1")
    assert d["record"]["action"] == "incremental"
    assert compiled_log(root)[4:] == ["csrc/a.cu"]
    tree = Path(d["record"]["slot"]) / "tree"
    assert (tree / "vllm/_C.so").read_bytes() == b"// a v1\n// b v1\n"


def test_explain_says_what_and_why_and_does_nothing(lab):
    root = lab.root
    r = run_vpatch(root, "build", "--target", "rocm", "--explain")
    assert r.rc == 0, r.err
    assert "full build" in r.out and "no earlier compile" in r.out
    assert not (root / ".vpatch" / "builds" / "records").exists()
    build(root, "--upto", "cu1")
    r = run_vpatch(root, "build", "--target", "rocm", "--upto", "py2", "--explain")
    assert r.rc == 0 and "reuse build" in r.out and "1 python file differs" in r.out
    r = run_vpatch(root, "build", "--target", "rocm", "--explain")
    assert "incremental compile" in r.out and "csrc/c.cu" in r.out
    assert len(list((root / ".vpatch" / "builds" / "records").glob("*.json"))) == 1


def test_failed_build_shows_log_tail_and_path_and_is_recorded(lab, vp):
    write_config(lab.root, lab.fake, env='FAKE_FAIL = "1"')
    r = run_vpatch(lab.root, "build", "--target", "rocm")
    assert r.rc == 5
    assert "failed in phase 'step 1'" in r.err and "csrc/a.cu:3: error: boom" in r.err
    log = next(ln.split("full log: ", 1)[1].split()[0] for ln in r.err.splitlines() if "full log: " in ln)
    assert "boom" in Path(log).read_text()
    st = run_vpatch(lab.root, "--json", "status").json
    assert st["last_build"]["status"] == "failed" and st["last_build"]["target"] == "rocm"
    # fixed: the next build succeeds and status shows it
    write_config(lab.root, lab.fake)
    build(lab.root)
    st = run_vpatch(lab.root, "status")
    assert "last build of this tree: success (rocm" in st.out


def test_record_survives_kill_9_and_reads_as_interrupted(lab):
    write_config(lab.root, lab.fake, env='FAKE_SLEEP = "30"')
    p = subprocess.Popen([sys.executable, "-m", "vpatch.manager.cli.main", "build", "--target", "rocm"], cwd=lab.root,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    rec_dir = lab.root / ".vpatch" / "builds" / "records"
    for _ in range(200):
        if rec_dir.exists() and any(rec_dir.glob("*.json")) and compiled_log(lab.root):
            break
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    [rec] = [json.loads(f.read_text()) for f in rec_dir.glob("*.json")]
    assert rec["status"] == "running"  # the file is whole
    st = run_vpatch(lab.root, "--json", "status").json
    assert st["last_build"]["status"] == "interrupted"
    write_config(lab.root, lab.fake)
    d = build(lab.root)  # the lock went with the process; the build resumes in the same build dir
    assert d["record"]["status"] == "success"


def test_rocm_without_rocm_is_refused_in_one_line_before_any_work(lab):
    from vpatch.manager import buildenv

    if buildenv.check("rocm").ok:
        pytest.skip("this machine has ROCm")
    (lab.root / "vpatch.toml").unlink()  # vpatch's own recipe: the toolchain is checked
    r = run_vpatch(lab.root, "build", "--target", "rocm", "--upto", "cu1")
    assert r.rc == 4
    first = r.err.splitlines()[0]
    assert first.startswith("error: cannot build --target rocm on this machine: missing")
    assert "hipcc" in first and "ROCm torch" in first
    assert not (lab.root / ".vpatch" / "builds").exists()
    r = run_vpatch(lab.root, "build")  # no target, no ROCm: says so
    assert r.rc == 4 and "no --target given" in r.err


def test_config_errors_name_the_file_and_line(lab):
    (lab.root / "vpatch.toml").write_text('[build]\ntarget = "rocm"\njobs = 0\n')
    r = run_vpatch(lab.root, "build")
    assert r.rc == 1
    assert f"{lab.root / 'vpatch.toml'}:3: [build.jobs]" in r.err
    (lab.root / "vpatch.toml").write_text('[build]\narch = "gfx1100;sm_nonsense"\n')
    r = run_vpatch(lab.root, "build", "--target", "empty", "--explain")
    assert r.rc == 1 and "sm_nonsense" in r.err and "vpatch.toml:2" in r.err
    (lab.root / "vpatch.toml").write_text('[build.command]\nrocm = "make -j"\n')
    r = run_vpatch(lab.root, "build", "--target", "rocm")
    assert r.rc == 1 and "not a shell string" in r.err


def test_arch_and_env_change_the_build_key(lab):
    root = lab.root
    build(root)
    d = build(root, "--arch", "gfx1100")
    assert d["record"]["action"] == "full" and d["record"]["arch"] == ["gfx1100"]
    d = build(root, "--arch", "gfx1100,gfx1151")
    assert d["record"]["action"] == "restore"  # the default arch list's libraries are cached


def test_unknown_entry_says_what_is_applied(lab):
    r = run_vpatch(lab.root, "build", "--target", "rocm", "--upto", "nope")
    assert r.rc == 1 and "entry 'nope' is not applied" in r.err and "py1" in r.err


def test_check_kernels_reuses_equal_kernel_sources(lab):
    pytest.importorskip("triton")
    r = run_vpatch(lab.root, "--json", "build", "--check-kernels", "--upto", "base")
    assert r.rc == 0, r.err
    k = r.json["kernels"]
    assert k["action"] == "compile" and (Path(k["dir"]) / "report.json").exists()
    assert {b["status"] for b in k["builds"]} <= {"skipped", "unsupported"}  # this tree has none of the kernels
    r = run_vpatch(lab.root, "--json", "build", "--check-kernels", "--upto", "py1")  # python-only difference
    assert r.json["kernels"]["action"] == "reuse"
    assert str(r.json["tree"]) in r.json["kernels"]["dir"]


@pytest.mark.venv
def test_real_python_only_build_of_v0_28_0_then_python_only_prefix_in_seconds(tmp_path, vpatch_cache):
    """The real `--target empty` build of patched vLLM v0.28.0 (about a minute), then a prefix that differs in
    python files only: reuse, no install, a few seconds; the venv runs the switched tree."""
    os.environ["VPATCH_CACHE"] = str(vpatch_cache)
    from vpatch.manager.sources import PypiSource

    s = SeriesDir(tmp_path / "fork", "v0.28.0", "pypi")
    env = {"VPATCH_CACHE": str(vpatch_cache)}
    src = PypiSource("pypi")
    src.ensure("v0.28.0")
    work = tmp_path / "edit"
    git(tmp_path, "clone", "-q", "--no-checkout", str(src.repo()), str(work))
    git(work, "checkout", "-q", "-b", "edit", "v0.28.0")
    mrope = work / "vllm/model_executor/layers/rotary_embedding/mrope.py"
    base_text = mrope.read_text()
    mrope.write_text(base_text + "\nVPATCH_BUILD_MARKER = 1\n")
    git(work, "commit", "-q", "-am", "mrope: marker")
    s.add_patch("marker", git(work, "format-patch", "-1", "--stdout", "--zero-commit", "--no-signature", "HEAD") + "\n")
    r = run_vpatch(s.root, "apply", env=env)
    assert r.rc == 0, r.err

    t = time.monotonic()
    r = run_vpatch(s.root, "--json", "build", "--target", "empty", "--upto", "base", env=env, timeout=1500)
    assert r.rc == 0, r.err
    first = r.json["record"]
    assert first["action"] == "full" and first["vllm_import"].startswith(first["slot"])
    full_s = time.monotonic() - t

    t = time.monotonic()
    r = run_vpatch(s.root, "--json", "build", "--target", "empty", env=env)
    assert r.rc == 0, r.err
    again = r.json["record"]
    took = time.monotonic() - t
    assert again["action"] == "reuse" and again["reused_from"] == first["id"]
    assert took < 15, f"python-only prefix took {took:.1f}s (first build {full_s:.0f}s)"
    py = again["python"]
    out = subprocess.run([py, "-c", "import vllm.model_executor.layers.rotary_embedding.mrope as m; "
                                    "print('MARKER', m.VPATCH_BUILD_MARKER, m.__file__)"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    [line] = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("MARKER ")]  # vLLM logs to stdout too
    assert line[1] == "1" and line[2].startswith(first["slot"])
    ws = s.root / ".vpatch" / "vllm"
    assert git(ws, "status", "--porcelain") == ""
    st = run_vpatch(s.root, "--json", "status", env=env).json
    assert st["last_build"]["status"] == "success" and st["last_build"]["target"] == "empty"
