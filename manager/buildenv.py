"""Honest environment checks for `vpatch build`: what a target needs, what this machine has.

Run before any work starts; a refusal is one line naming everything that is missing.

What a target needs to compile vLLM (the default recipe; a lab's `[build.command]` owns its own):

- ``rocm``: ``hipcc`` of a ROCm install (``$ROCM_PATH``/``$ROCM_HOME`` or ``/opt/rocm``; Debian's
  stand-alone ``hipcc`` (HIP 5.2, clang 15) compiles device code but has no ROCm CMake/runtime for
  vLLM's build and cannot target gfx1151), a **ROCm torch** in the build python (``torch.version.hip``),
  and ``rocminfo`` that answers (it lists the GPU agents; a machine without a working ROCm stack fails it).
  Compiling needs no GPU, so a ``rocminfo`` that runs but sees no agent is a note, not a refusal.
- ``cuda``: ``nvcc`` and a CUDA torch (``torch.version.cuda``).
- ``cpu``: ``cmake``, a C++ compiler and torch.
- ``empty``: python >= 3.10 (the python-only build; torch comes from runtime_env's recipe).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import VpatchError


class EnvironmentRefused(VpatchError):
    """The machine lacks what the asked-for target needs; nothing was started."""

    exit_code = 4


@dataclass
class EnvReport:
    target: str
    ok: bool
    missing: list[str] = field(default_factory=list)  # short phrases, each naming what is missing
    found: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"cannot build --target {self.target} on this machine: missing "
                + "; ".join(self.missing))

    def as_dict(self) -> dict:
        return {"target": self.target, "ok": self.ok, "missing": self.missing, "found": self.found,
                "notes": self.notes}


@lru_cache(maxsize=8)
def probe_python(python: str) -> dict:
    """Version of ``python`` and of the torch it imports (with its HIP / CUDA versions)."""
    code = ("import json,sys\n"
            "d={'python':'%d.%d.%d'%sys.version_info[:3]}\n"
            "try:\n import torch\n d.update(torch=torch.__version__,hip=getattr(torch.version,'hip',None),"
            "cuda=getattr(torch.version,'cuda',None))\n"
            "except Exception as e:\n d['torch_error']=f'{type(e).__name__}: {e}'[:200]\n"
            "print(json.dumps(d))")
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONNOUSERSITE": "1"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{python}: {e}"}
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"{python}: {(r.stderr or r.stdout).strip()[-200:]}"}


def rocm_root() -> Path | None:
    for var in ("ROCM_PATH", "ROCM_HOME"):
        v = os.environ.get(var)
        if v and (Path(v) / "bin" / "hipcc").exists():
            return Path(v)
    p = Path("/opt/rocm")
    if (p / "bin" / "hipcc").exists():
        return p
    return None


def _run(argv: list[str], timeout: float = 20) -> tuple[int, str]:
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                           errors="replace")
        return r.returncode, r.stdout
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f}s"
    except OSError as e:
        return 127, str(e)


def _first_line(text: str) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("libkmod")]
    return lines[-1][:120] if lines else ""


def hipcc_info() -> dict:
    """Where hipcc is, which HIP it is, and whether it belongs to a ROCm install."""
    root = rocm_root()
    hipcc = str(root / "bin" / "hipcc") if root else shutil.which("hipcc")
    if not hipcc:
        return {"hipcc": None}
    rc, out = _run([hipcc, "--version"], timeout=30)
    version = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("HIP version")), None)
    return {"hipcc": hipcc, "hip_version": version, "rocm_root": str(root) if root else None}


def rocminfo_info() -> dict:
    root = rocm_root()
    exe = shutil.which("rocminfo") or (str(root / "bin" / "rocminfo") if root else None)
    if not exe or not Path(exe).exists():
        return {"rocminfo": None}
    rc, out = _run([exe], timeout=20)
    agents = sorted({ln.split(":", 1)[1].strip() for ln in out.splitlines()
                     if ln.strip().startswith("Name:") and "gfx" in ln})
    ok = rc == 0 and "not loaded" not in out.lower() and "error" not in out.lower()[:2000] or bool(agents)
    return {"rocminfo": exe, "rocminfo_ok": ok, "gpu_agents": agents, "rocminfo_says": _first_line(out)}


def check(target: str, python: str | None = None, *, override: list | None = None) -> EnvReport:
    """What ``target`` needs here. ``override``: a lab's command; then only its program is checked."""
    python = python or sys.executable
    rep = EnvReport(target=target, ok=True)
    if override:
        prog = override[0][0]
        if not prog.startswith("{") and not (shutil.which(prog) or Path(prog).exists()):
            rep.missing.append(f"the [build.command] program {prog!r} (not found on PATH)")
        rep.notes.append("a [build.command] recipe is configured: its own toolchain is not checked by vpatch")
        rep.ok = not rep.missing
        return rep

    if target == "empty":
        rep.ok = not rep.missing
        return rep

    py = probe_python(python)
    rep.found["python"] = {"path": python, **py}
    torch_desc = (f"{python} has torch {py['torch']}" if py.get("torch")
                  else f"{python} has no torch ({py.get('torch_error') or py.get('error', '?')})")

    if target == "rocm":
        hip = hipcc_info()
        rep.found.update(hip)
        if not hip["hipcc"]:
            rep.missing.append("hipcc of a ROCm install (no hipcc on PATH, no /opt/rocm, $ROCM_PATH unset)")
        elif not hip.get("rocm_root"):
            rep.missing.append(f"hipcc of a ROCm install ({hip['hipcc']} is a stand-alone HIP "
                               f"{hip.get('hip_version') or '?'}; no /opt/rocm, $ROCM_PATH unset)")
        if not py.get("hip"):
            rep.missing.append(f"a ROCm torch ({torch_desc}; set [build] python to one with torch.version.hip)")
        ri = rocminfo_info()
        rep.found.update(ri)
        if not ri["rocminfo"]:
            rep.missing.append("rocminfo (not installed)")
        elif not ri["rocminfo_ok"]:
            rep.missing.append(f"a working rocminfo ({ri['rocminfo_says'] or 'it failed'})")
        elif not ri["gpu_agents"]:
            rep.notes.append("rocminfo sees no GPU agent: the build works, running it here will not")
        # rocminfo alone (a ROCm stack without a GPU) does not block a compile; hipcc and torch do
        rep.ok = bool(hip.get("rocm_root")) and bool(py.get("hip"))
        if not rep.ok and not rep.missing:
            rep.missing.append("ROCm")
        return rep

    if target == "cuda":
        nvcc = shutil.which("nvcc") or (str(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc")
                                        if os.environ.get("CUDA_HOME") else None)
        rep.found["nvcc"] = nvcc
        if not nvcc:
            rep.missing.append("nvcc (no CUDA toolkit on PATH, $CUDA_HOME unset)")
        if not py.get("cuda"):
            rep.missing.append(f"a CUDA torch ({torch_desc})")
    elif target == "cpu":
        for tool in ("cmake",):
            if not shutil.which(tool):
                rep.missing.append(f"{tool} (not on PATH)")
        if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
            rep.missing.append("a C++ compiler (c++/g++/clang++)")
        if not py.get("torch"):
            rep.missing.append(f"torch ({torch_desc})")
    rep.ok = not rep.missing
    return rep


def rocm_available(python: str | None = None) -> tuple[bool, EnvReport]:
    rep = check("rocm", python)
    return rep.ok, rep


def ccache_path() -> str | None:
    return shutil.which("ccache") or shutil.which("sccache")
