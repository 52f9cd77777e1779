"""The python-only runtime of a workspace: a venv with CPU torch and the workspace's vLLM installed
editable (``VLLM_TARGET_DEVICE=empty``), made once per workspace and reused.

It is what ``vpatch verify`` runs the entries' checks in.  The recipe (measured on the CPU build
machines, ~1 min the first time, instant afterwards)::

    python -m venv VENV
    VENV/bin/pip install torch==2.13.0
    VENV/bin/pip install cmake ninja packaging "setuptools<81" setuptools-scm setuptools-rust wheel jinja2
    VLLM_TARGET_DEVICE=empty VENV/bin/pip install -e WORKSPACE --no-build-isolation

Every pip call carries a constraints file pinning ``torch==2.13.0``, so no requirement of vLLM can
pull another torch.  ``setuptools-scm`` wants a version from git tags the workspace may not have
(a pypi-derived repo has ``v0.28.0``-style tags at best, a clone often none), so the version is read
from the tree (``PKG-INFO``, ``vllm/_version.py``, else ``git describe``) and handed over as
``SETUPTOOLS_SCM_PRETEND_VERSION``.

Where the venv lives: :func:`default_venv_dir` — ``<state_dir>/runtime/<workspace name>-<12 hex of
sha256(resolved workspace path)>``, so each workspace has its own, the path is stable across runs,
and ``rm -r .vpatch/runtime`` drops them all.

A stamp file (``vpatch-runtime.json`` in the venv) records the recipe, the workspace path, its vLLM
version and a digest of its requirements; when all match, :func:`ensure_runtime` returns at once.
When only the workspace side changed (another base, other requirements) the editable install is
redone in the same venv; when the recipe changed the venv is rebuilt.

The editable install writes into the workspace (``vllm/_version.py``, ``*.egg-info``); vpatch's
workspace must stay clean (``apply`` refuses a dirty one), so tracked files the install changed are
restored from HEAD (only those that were clean before it) and new untracked paths are listed in
the repository's ``.git/info/exclude``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from contextlib import ExitStack
from pathlib import Path

from . import output
from .atomic import read_json, write_json
from .errors import VpatchError
from .file_lock import locked
from .git import Result, run_git

RECIPE = 1
TORCH_REQ = "torch==2.13.0"
BUILD_TOOLS = ["cmake", "ninja", "packaging", "setuptools<81", "setuptools-scm", "setuptools-rust",
               "wheel", "jinja2"]
STAMP = "vpatch-runtime.json"
LOG = "install.log"


class RuntimeEnvError(VpatchError):
    """The python-only runtime could not be made."""


def default_venv_dir(state_dir: Path, workspace: Path) -> Path:
    ws = Path(workspace).resolve()
    digest = hashlib.sha256(str(ws).encode()).hexdigest()[:12]
    return Path(state_dir) / "runtime" / f"{ws.name}-{digest}"


def venv_python(venv_dir: Path) -> Path:
    return Path(venv_dir) / "bin" / "python"


# --- what the workspace holds ------------------------------------------------------------------
_VERSION_PY_RE = re.compile(r"""^__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", re.M)
_PKG_INFO_RE = re.compile(r"^Version:\s*(\S+)\s*$", re.M)


def workspace_vllm_version(workspace: Path) -> str:
    """The vLLM version of the tree, without running any of its code."""
    ws = Path(workspace)
    pkg_info = ws / "PKG-INFO"
    if pkg_info.is_file():
        m = _PKG_INFO_RE.search(pkg_info.read_text(encoding="utf-8", errors="replace")[:4000])
        if m:
            return m.group(1)
    vfile = ws / "vllm" / "_version.py"
    if vfile.is_file():
        m = _VERSION_PY_RE.search(vfile.read_text(encoding="utf-8", errors="replace"))
        if m:
            return m.group(1)
    r = _git(ws, "describe", "--tags", "--abbrev=0", "--match", "v[0-9]*", check=False)
    if r.ok and r.out.strip():
        tag = r.out.strip().lstrip("v")
        if re.match(r"^\d+(\.\d+)*", tag):
            return tag
    return "0.0.0+vpatch"


def requirements_digest(workspace: Path) -> str:
    """sha256 over the requirement files a python-only install reads (common.txt and its -r's)."""
    ws = Path(workspace)
    h = hashlib.sha256()
    seen: set[Path] = set()

    def add(p: Path) -> None:
        if p in seen or not p.is_file():
            return
        seen.add(p)
        text = p.read_bytes()
        h.update(str(p.relative_to(ws)).encode() + b"\0" + text + b"\0")
        for line in text.decode("utf-8", "replace").splitlines():
            if line.startswith("-r "):
                add(p.parent / line.split()[1])

    add(ws / "requirements" / "common.txt")
    add(ws / "pyproject.toml")
    return h.hexdigest()


def _git(cwd: Path, *args: str, check: bool = True) -> Result:
    r = run_git(*args, cwd=cwd, check=False, strip=False)
    if check and not r.ok:
        raise RuntimeEnvError(f"git {' '.join(args[:2])} failed in {cwd}: {r.err}")
    return r


def _status(ws: Path) -> dict[str, str]:
    """path -> porcelain XY code (untracked '??'); empty when ws is not a git work tree."""
    r = _git(ws, "status", "--porcelain=v1", "-z", "--untracked-files=all", check=False)
    if not r.ok:
        return {}
    out: dict[str, str] = {}
    parts = r.out.split("\0")
    i = 0
    while i < len(parts):
        item = parts[i]
        i += 1
        if len(item) < 4:
            continue
        code, path = item[:2], item[3:]
        if code[0] in "RC":  # a rename carries its source as the next field
            i += 1
        out[path] = code
    return out


def _keep_workspace_clean(ws: Path, before: dict[str, str]) -> list[str]:
    """Undo what the install wrote into the workspace; returns the paths it touched."""
    after = _status(ws)
    touched = []
    restore = [p for p, code in after.items() if code != "??" and p not in before]
    if restore:
        _git(ws, "restore", "--source=HEAD", "--staged", "--worktree", "--", *restore, check=False)
        touched += restore
    new_untracked = sorted(p for p, code in after.items() if code == "??" and p not in before)
    if new_untracked:
        # exclude the top-level entry of each new path (vllm.egg-info/, build/ ...)
        tops = sorted({p.split("/", 1)[0] + ("/" if "/" in p else "") for p in new_untracked})
        gd = _git(ws, "rev-parse", "--git-common-dir", check=False)
        if gd.ok:
            git_dir = (ws / gd.out.strip()).resolve()
            excl = git_dir / "info" / "exclude"
            excl.parent.mkdir(parents=True, exist_ok=True)
            have = excl.read_text(encoding="utf-8").splitlines() if excl.exists() else []
            add = [f"/{t}" for t in tops if f"/{t}" not in have]
            if add:
                with open(excl, "a", encoding="utf-8") as f:
                    if have and have[-1].strip():
                        f.write("\n")
                    f.write("# written by vpatch's python-only install (manager/runtime_env.py)\n")
                    f.write("\n".join(add) + "\n")
        touched += new_untracked
    return touched


# --- running pip with progress ------------------------------------------------------------------
def _run_logged(argv: list[str], *, env: dict, cwd: Path, log_path: Path, step, phase: str,
                timeout_s: float = 3600) -> None:
    """Run argv, append its output to the log, show its latest line as the step's detail."""
    tail: deque[str] = deque(maxlen=25)
    started = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            line = line.rstrip()
            if line:
                tail.append(line)
                if step is not None and (line.startswith(("Collecting", "Installing", "Building",
                                                          "Successfully", "Downloading", "Obtaining",
                                                          "Preparing", "Processing"))):
                    step.detail(f"{phase}: {line[:70]}")
            if time.monotonic() - started > timeout_s:
                proc.kill()
                break
        rc = proc.wait()
        log.write(f"[exit {rc}, {time.monotonic() - started:.1f}s]\n")
    if rc != 0:
        last = "\n".join(list(tail)[-8:])
        raise RuntimeEnvError(
            f"python-only install failed at '{phase}' (exit {rc}): {tail[-1] if tail else 'no output'}",
            f"the full output is in {log_path}; remove {log_path.parent} to start over",
            data={"phase": phase, "log": str(log_path), "output_tail": last},
        )


def _stamp_ok(stamp: dict | None, ws: Path, version: str, reqs: str, py: Path) -> str:
    """'ok' | 'reinstall' (the venv is fine, the workspace side changed) | 'rebuild'."""
    if not stamp or stamp.get("recipe") != RECIPE or not py.exists() or not stamp.get("base_done"):
        return "rebuild"
    if stamp.get("workspace") != str(ws) or stamp.get("vllm_version") != version \
            or stamp.get("requirements") != reqs or not stamp.get("vllm_done"):
        return "reinstall"
    return "ok"


def runtime_info(venv_dir: Path) -> dict | None:
    """The stamp of an existing runtime (None if there is none)."""
    return read_json(Path(venv_dir) / STAMP)


def ensure_runtime(workspace: Path, venv_dir: Path, *, progress=None, python: str | None = None) -> Path:
    """Make (once) and return the python of a venv holding the workspace's vLLM, python-only.

    ``progress``: an :class:`output.Step` to report on; when None, a progress bar is opened if
    an install is needed.  ``python``: the interpreter to make the venv with (default: this one).
    """
    ws = Path(workspace).resolve()
    venv = Path(venv_dir).resolve()
    if not (ws / "setup.py").is_file() or not (ws / "vllm").is_dir():
        raise RuntimeEnvError(f"{ws} does not look like a vLLM source tree (no setup.py / vllm/)",
                            "run `vpatch apply` first, or pass --workspace")
    py = venv_python(venv)
    version = workspace_vllm_version(ws)
    reqs = requirements_digest(ws)
    if _stamp_ok(runtime_info(venv), ws, version, reqs, py) == "ok":
        return py

    venv.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(locked(venv.parent / f".{venv.name}.lock", what="runtime venv"))
        stamp = runtime_info(venv)
        state = _stamp_ok(stamp, ws, version, reqs, py)  # another process may have made it meanwhile
        if state == "ok":
            return py
        step = progress
        if step is None:
            step = stack.enter_context(output.progress(f"python-only vLLM {version} runtime", total=4))
        log_path = venv / LOG
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
               "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        timings: dict[str, float] = dict((stamp or {}).get("install_s", {})) if state == "reinstall" else {}

        if state == "rebuild":
            if venv.exists():
                if not (venv / STAMP).exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
                    raise RuntimeEnvError(f"{venv} exists and is not a vpatch runtime",
                                        "remove it or pick another state directory")
                shutil.rmtree(venv)
            venv.mkdir(parents=True)
            t = time.monotonic()
            step.detail("creating the venv")
            _run_logged([python or sys.executable, "-m", "venv", str(venv)], env=env, cwd=venv,
                        log_path=log_path, step=step, phase="venv")
            timings["venv"] = round(time.monotonic() - t, 1)
            (venv / "constraints.txt").write_text(f"{TORCH_REQ}\n", encoding="utf-8")
            step.advance(1)
            pip = [str(py), "-m", "pip", "install", "-c", str(venv / "constraints.txt")]
            t = time.monotonic()
            _run_logged([*pip, TORCH_REQ], env=env, cwd=venv, log_path=log_path, step=step, phase="torch")
            timings["torch"] = round(time.monotonic() - t, 1)
            step.advance(1)
            t = time.monotonic()
            _run_logged([*pip, *BUILD_TOOLS], env=env, cwd=venv, log_path=log_path, step=step,
                        phase="build tools")
            timings["build_tools"] = round(time.monotonic() - t, 1)
            step.advance(1)
            write_json(venv / STAMP, {"recipe": RECIPE, "base_done": True, "torch": TORCH_REQ,
                                      "install_s": timings})
        else:
            step.advance(3)

        pip = [str(py), "-m", "pip", "install", "-c", str(venv / "constraints.txt")]
        env_v = {**env, "VLLM_TARGET_DEVICE": "empty", "SETUPTOOLS_SCM_PRETEND_VERSION": version,
                 "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_VLLM": version}
        before = _status(ws)
        t = time.monotonic()
        try:
            _run_logged([*pip, "-e", str(ws), "--no-build-isolation"], env=env_v, cwd=ws, log_path=log_path,
                        step=step, phase=f"vllm {version} (editable)")
        finally:
            touched = _keep_workspace_clean(ws, before)
        timings["vllm"] = round(time.monotonic() - t, 1)
        step.advance(1, detail=f"done in {sum(timings.values()):.0f}s")
        torch_v = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
        if not torch_v.startswith(TORCH_REQ.split("==")[1]):
            raise RuntimeEnvError(f"the runtime ended up with torch {torch_v or '?'}, not {TORCH_REQ}",
                                f"see {log_path}; remove {venv} to start over")
        write_json(venv / STAMP, {
            "recipe": RECIPE, "base_done": True, "vllm_done": True, "torch": torch_v,
            "workspace": str(ws), "vllm_version": version, "requirements": reqs,
            "python": str(py), "install_s": timings, "workspace_files_restored": touched,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    return py


def runtime_summary(venv_dir: Path) -> dict:
    info = runtime_info(venv_dir) or {}
    return {"venv": str(venv_dir), "vllm_version": info.get("vllm_version"), "torch": info.get("torch"),
            "install_s": info.get("install_s")}


if __name__ == "__main__":  # python -m vpatch.manager.runtime_env WORKSPACE VENV
    p = ensure_runtime(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps({"python": str(p), **runtime_summary(Path(sys.argv[2]))}, indent=2))
