"""`vpatch verify --python P` tests the workspace's vLLM or refuses: P's `import vllm` must resolve into it."""
from __future__ import annotations

import sys

from conftest import SeriesDir, make_patch

CHECK = "{python} {series_dir}/checks/mod.py"


def _wrapper(path, pythonpath: str):
    """An interpreter that puts ``pythonpath`` first on sys.path (like a venv with another vLLM installed)."""
    path.write_text(f"#!/bin/sh\nPYTHONPATH={pythonpath} exec {sys.executable} \"$@\"\n")
    path.chmod(0o755)
    return path


def test_verify_refuses_a_python_whose_vllm_is_elsewhere(tmp_path, upstream, vp):
    (upstream.path / "vllm").mkdir()
    upstream.write("vllm/__init__.py", "")
    upstream.write("vllm/mod.py", "X = 1\n")
    upstream.commit("pkg", tag="v1.0.1")
    s = SeriesDir(tmp_path / "fork", "v1.0.1", str(upstream.path))
    (s.root / "patches" / "checks").mkdir()
    (s.root / "patches" / "checks" / "mod.py").write_text("import sys, vllm.mod\nsys.exit(0 if getattr(vllm.mod, 'FAST', 0) else 1)\n")
    s.add_patch("fast", make_patch(upstream, {"vllm/mod.py": "X = 1\nFAST = True\n"}, "fast"),
                extra=f'checks = ["{CHECK}"]\n')
    assert vp(s.root, "--json", "apply").rc == 0
    ws = s.root / ".vpatch" / "vllm"
    # another tree's vLLM, without the entry: its check would fail (or pass) for the wrong tree
    other = tmp_path / "other"
    (other / "vllm").mkdir(parents=True)
    (other / "vllm" / "__init__.py").write_text("")
    (other / "vllm" / "mod.py").write_text("FAST = True\n")
    r = vp(s.root, "--json", "verify", "--python", str(_wrapper(tmp_path / "py-other", str(other))))
    assert r.rc != 0 and r.rc != 70, r.out + r.err
    assert f"imports vllm from {other / 'vllm'}, not from the workspace" in r.json["error"]
    assert "omit --python" in r.json["hint"]
    r = vp(s.root, "--json", "verify", "--python", sys.executable)  # cannot import vllm at all
    assert "cannot import vllm" in r.json["error"]
    # the workspace's own tree on the path: accepted, and the check runs there
    r = vp(s.root, "--json", "verify", "--python", str(_wrapper(tmp_path / "py-ws", str(ws))))
    assert r.rc == 0, r.out + r.err
    assert r.json["entries"][0]["result"] == "pass"
    assert r.json["runtime"]["vllm"].startswith(str(ws.resolve()))
