"""Compile and run a small host program against the tree's torch-free C++ headers (g++)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def vllm_tree() -> Path:
    """The source tree the running vLLM comes from (a python-only install is editable)."""
    import vllm

    return Path(vllm.__file__).resolve().parent.parent


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def run_program(source: str, include_dirs: list[Path], env: dict | None = None, args: list[str] = (),
                opt: str = "-O0") -> subprocess.CompletedProcess:
    cxx = compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler (g++) on PATH")
    d = Path(tempfile.mkdtemp(prefix="vpatch-check-"))
    try:
        src, exe = d / "prog.cpp", d / "prog"
        src.write_text(source)
        argv = [cxx, "-std=c++17", opt, *[f"-I{p}" for p in include_dirs], str(src), "-o", str(exe)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return r
        return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **(env or {})})
    finally:
        shutil.rmtree(d, ignore_errors=True)


def rocm_sources() -> Path | None:
    """The tree's ``csrc/rocm`` when vLLM imports and a C++ compiler is on PATH; None (after printing
    why: the caller exits 2, the check could not run) otherwise."""
    try:
        rocm = vllm_tree() / "csrc" / "rocm"
    except Exception as e:
        print(f"ERROR: cannot import vLLM: {type(e).__name__}: {e}")
        return None
    if compiler() is None:
        print("ERROR: no C++ compiler (g++) on PATH")
        return None
    return rocm
