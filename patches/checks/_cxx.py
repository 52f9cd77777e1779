"""Compile and run a small host program against the tree's torch-free C++ headers (g++), or compile HIP
device code for gfx11 to its ISA (hipcc)."""
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


HIP_BITCODE_DIRS = ("/usr/lib/x86_64-linux-gnu/amdgcn/bitcode", "/opt/rocm/amdgcn/bitcode")
HIP_BITCODE_LIBS = ("ockl", "ocml", "oclc_wavefrontsize64_off", "oclc_abi_version_400", "hip")


def hipcc() -> str | None:
    return shutil.which("hipcc") or ("/opt/rocm/bin/hipcc" if os.access("/opt/rocm/bin/hipcc", os.X_OK) else None)


def _hip_bitcode() -> list[str]:
    """Debian's device libraries linked by hand (its hipcc does not find them itself); [] under ROCm."""
    for d in HIP_BITCODE_DIRS:
        if all(Path(d, f"{lib}.bc").is_file() for lib in HIP_BITCODE_LIBS):
            out = ["-nogpulib"]
            for lib in HIP_BITCODE_LIBS:
                out += ["-Xclang", "-mlink-builtin-bitcode", "-Xclang", str(Path(d, f"{lib}.bc"))]
            return out
    return []


def rocm_hip() -> tuple[Path, str] | None:
    """(the tree's ``csrc/rocm``, hipcc) when vLLM imports and hipcc is there; None (after printing why: the
    caller exits 2, the check could not run) otherwise. The HIP twin of :func:`rocm_sources`."""
    try:
        rocm = vllm_tree() / "csrc" / "rocm"
    except Exception as e:
        print(f"ERROR: cannot import vLLM: {type(e).__name__}: {e}")
        return None
    hip = hipcc()
    if hip is None:
        print("ERROR: no hipcc (apt-get install -y --no-install-recommends hipcc rocm-device-libs)")
        return None
    return rocm, hip


def gfx1100_isa(hip: str, source: str, rocm: Path, *, what: str, prefix: str) -> str | int:
    """The gfx1100 ISA of ``source`` (see :func:`hip_device_asm`), or, when hipcc fails, the check's exit
    status after printing hipcc's output and the FAIL verdict naming ``what``."""
    from _scope import verdict

    rc, isa = hip_device_asm(hip, source, rocm, prefix=prefix)
    if rc != 0:
        print(isa)
        return verdict([f"hipcc could not build the {what} for gfx1100 (exit {rc})"], "")
    return isa


def hip_device_asm(hip: str, source: str, include_dir: Path, *, arch: str = "gfx1100",
                   prefix: str = "vpatch-hip-") -> tuple[int, str]:
    """Compile ``source`` (HIP) for ``arch``, device code only: (0, its ISA text), or (hipcc's exit code, the
    tail of its output)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        (d / "inst.hip").write_text(source)
        r = subprocess.run([hip, "-std=c++17", "-O3", f"--offload-arch={arch}", *_hip_bitcode(), "-I", str(include_dir),
                            "--cuda-device-only", "-S", str(d / "inst.hip"), "-o", str(d / "inst.s")],
                           capture_output=True, text=True, timeout=900, env={**os.environ, "HIP_PLATFORM": "amd"})
        if r.returncode != 0:
            return r.returncode, (r.stdout + r.stderr)[-3000:]
        return 0, (d / "inst.s").read_text()
    finally:
        shutil.rmtree(d, ignore_errors=True)
