"""The gfx11 kernel build: the series' device code compiled for RDNA3/3.5 on a CPU machine.

``check_kernels(tree, out_dir)`` is what ``vpatch build --check-kernels`` calls on a
prefix's tree (the series applied on the base):

* HIP: each torch-free device header of the series (``csrc/rocm/*.cuh``) is
  instantiated at its decode design points and compiled device-only with
  Debian's hipcc (``HIP_PLATFORM=amd``, the generic ROCm bitcode linked by hand,
  since Debian 12 ships no gfx11 ISA bitcode) — once with ``-S`` for the ISA and
  once with ``-c`` for the code object.
* Triton: the patched ``fused_moe_kernel_gptq_awq`` (shuffled W4A16 mode) is
  compiled ahead of time with ``triton.compile(ASTSource(...),
  target=GPUTarget("hip", arch, 32))``; no GPU needed.

Each (kernel, arch) is reported ``ok`` / ``failed`` (with the log tail) /
``unsupported`` (this toolchain cannot target the arch: Debian 12's clang 15
has no gfx1151, which needs clang >= 19, i.e. ROCm >= 6.3) / ``skipped`` (no
hipcc, no triton, or the tree lacks the kernel), together with an instruction
census of the kernel and of its hot loop. Subprocesses get argv lists only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

HIPCC_HINT = "hipcc not found: apt-get install -y --no-install-recommends hipcc rocm-device-libs"
BITCODE_DIRS = ("/usr/lib/x86_64-linux-gnu/amdgcn/bitcode", "/opt/rocm/amdgcn/bitcode")
# hip.bc: __syncthreads() lowers to __atomic_work_item_fence, defined there.
BITCODE_LIBS = ("ockl", "ocml", "oclc_wavefrontsize64_off", "oclc_abi_version_400", "hip")
# Oldest clang (major) whose AMDGPU backend knows the arch.
MIN_CLANG = {"gfx1100": 15, "gfx1101": 15, "gfx1102": 15, "gfx1103": 16, "gfx1150": 19, "gfx1151": 19,
             "gfx1152": 19, "gfx1200": 18, "gfx1201": 18}
ROCM_FOR_CLANG = {16: "5.5", 17: "6.0", 18: "6.2", 19: "6.3"}

# Mnemonics worth counting in gfx11 int4 GEMV code. Non-temporal loads are
# counted separately (gfx11 spells them `slc dlc`, gfx12 `nt`).
CENSUS = ("v_dot2_f32_bf16", "v_dot2_f32_f16", "v_dot2acc_f32_f16", "v_dot2c_f32_f16", "v_pk_fma_f16",
          "v_pk_add_f16", "v_pk_mul_f16", "v_bfe_u32", "v_and_or_b32", "v_and_b32", "v_lshrrev_b32",
          "v_perm_b32", "v_cvt_f32_f16", "v_cvt_f32_bf16", "v_fma_f32", "v_fmac_f32", "v_fma_mix_f32",
          "v_mul_f32", "v_add_f32", "v_wmma_f32_16x16x16_f16", "v_wmma_f32_16x16x16_bf16",
          "v_rcp_f32", "v_exp_f32", "ds_load_b128", "ds_load_b64", "global_load_b128", "global_load_b64",
          "global_load_b32", "buffer_load_b128", "buffer_load_b64", "buffer_load_b32")


# --- the series' kernels ---------------------------------------------------------

@dataclass(frozen=True)
class HipUnit:
    name: str
    header: str  # path in the vLLM tree
    instantiations: tuple[str, ...]  # explicit template instantiations (inside the namespace)


_GEMV_ARGS = "(int,int,const uint32_t*,const {T}*,const {T}*,{T}*,const float*,const int32_t*,const int32_t*,const int32_t*,int,int,int)"
_MEGA_ARGS = "(int,int,const uint32_t*,const {T}*,const {T}*,const int32_t*,const float*,{T}*,int)"


def _inst(kernel: str, tmpl: str, args: str, T: str) -> str:
    return f"template __global__ void {kernel}<{T},{tmpl}>{args.format(T=T)};"


HIP_UNITS = (
    # N=1 decode design point: THRDS 32, YTILE 2, WvPrGrp 4, A_CHUNK 16, UNRL 4, 16 KB LDS, scattered.
    HipUnit("moe_wvsplitk_int4", "csrc/rocm/moe_wvsplitk_int4.cuh", (
        _inst("moe_wvSplitK_int4_kernel", "32,2,4,16,4,1,128,8192,true", _GEMV_ARGS, "bf16_t"),
        _inst("moe_wvSplitK_int4_kernel", "32,2,4,16,4,1,32,8192,true", _GEMV_ARGS, "__half"),
    )),
    HipUnit("moe_megakernel", "csrc/rocm/moe_megakernel.cuh", (
        _inst("moe_megakernel_gemm2_reduce", "32,2,16,32,4,32,8192,true", _MEGA_ARGS, "bf16_t"),
        _inst("moe_megakernel_gemm2_reduce", "32,2,16,32,4,128,8192,false", _MEGA_ARGS, "__half"),
    )),
)
HIP_NAMESPACE = "vllm_moe_int4"


@dataclass(frozen=True)
class HipSource:
    """A whole vLLM ROCm source compiled device-only: its own host code's launches instantiate the
    kernels (so a dispatch table an entry edits is what gets built), torch and the ROCm >= 5.7
    headers replaced by stand-ins (manager/hip_standins.py)."""
    name: str
    source: str  # path in the vLLM tree
    # (regex, replacement, why): layout-preserving edits the Debian toolchain needs; each must match
    edits: tuple[tuple[str, str, str], ...]
    defines: tuple[str, ...]
    census_kernels: tuple[str, ...]  # mangled-name prefixes of the kernels the census is taken over


def _mangled(kernel: str, T: str, args: tuple[int, ...]) -> str:
    return f"_Z{len(kernel)}{kernel}I{T}" + "".join(f"Li{a}E" for a in args) + "E"


# The dense bf16/fp16 wvSplitK GEMV (entry dense-wvsplitk-n1-tune). Two things in it do not
# compile with Debian 12's HIP 5.2 / clang 15, both in the kernels' `bigType` unions, both sized
# like their neighbours so the union's layout is unchanged:
#  * `float2 f2[A_CHUNK / 4]`: HIP 5.2's float2 has a user-written copy assignment, which deletes
#    the union's (every `bigA = *(bigType*)...` fails); ROCm >= 6's is trivial. No gfx11 code uses
#    the member, so it is dropped (a use would fail to compile, not pass silently).
#  * `__bf16` (the gfx9 MFMA member `h4`, never used on gfx11): clang 15 has no __bf16 on AMDGPU
#    (clang >= 17 has); it is spelled as the 2-byte `unsigned short` instead.
DENSE_WVSPLITK_TUNED = (32, 2, 4, 16, 4, 1)  # THRDS, YTILE, WvPrGrp, A_CHUNK, UNRL, N: the tune table's default (idx 10)
HIP_SOURCES = (
    HipSource(
        "dense_wvsplitk", "csrc/rocm/skinny_gemms.cu",
        edits=((r"(?m)^(\s*)float2 f2\[A_CHUNK / 4\];",
                r"\1/* float2 f2[A_CHUNK / 4]: unused on gfx11, dropped for HIP 5.2 (vpatch kernels.py) */",
                "HIP 5.2's float2 is not trivially copy-assignable"),),
        defines=("USE_ROCM", "__bf16=unsigned short"),
        census_kernels=(_mangled("wvSplitK_hf_sml_", "14__hip_bfloat16", DENSE_WVSPLITK_TUNED),
                        _mangled("wvSplitK_hf_sml_", "6__half", DENSE_WVSPLITK_TUNED)),
    ),
)
MEGA_CFG_H = "csrc/rocm/moe_megakernel_cfg.h"
_MEGA_CFG_RE = re.compile(r"constexpr\s+MegaCfg\s+kMegaCfg\s*=\s*\{([^}]*)\}")


def megakernel_cfg(tree: Path) -> tuple[int, int, int, int, int] | None:
    """(THRDS, YTILE, WvPrGrp, A_CHUNK, UNRL) of the megakernel launch in `tree`, if it says."""
    path = Path(tree) / MEGA_CFG_H
    if not path.is_file():
        return None
    m = _MEGA_CFG_RE.search(path.read_text())
    if not m:
        return None
    vals = tuple(int(v) for v in m.group(1).replace(" ", "").split(","))
    return vals if len(vals) == 5 else None


def hip_units(tree: Path) -> tuple[HipUnit, ...]:
    """The HIP units to build for `tree`: the megakernel at the launch its tree configures
    (moe_megakernel_cfg.h), so that the ISA census of each tuning entry shows its own step."""
    cfg = megakernel_cfg(tree)
    if cfg is None:
        return HIP_UNITS
    t, y, w, a, u = cfg
    mega = HipUnit("moe_megakernel", "csrc/rocm/moe_megakernel.cuh", (
        _inst("moe_megakernel_gemm2_reduce", f"{t},{y},{w},{a},{u},32,8192,true", _MEGA_ARGS, "bf16_t"),
        _inst("moe_megakernel_gemm2_reduce", f"{t},{y},{w},{a},{u},128,8192,false", _MEGA_ARGS, "__half"),
    ))
    return tuple(mega if unit.name == "moe_megakernel" else unit for unit in HIP_UNITS)
FUSED_MOE_PY = "vllm/model_executor/layers/fused_moe/fused_moe.py"


@dataclass(frozen=True)
class TritonVariant:
    name: str
    dtype: str  # "bf16" / "fp16"
    N: int
    K: int
    group_size: int


# The Qwen3-Omni-30B-A3B shapes: gate_up 1536x2048, down 2048x768.
TRITON_VARIANTS = (
    TritonVariant("moe_gemm1_shuffle_w4a16_bf16", "bf16", 1536, 2048, 128),
    TritonVariant("moe_gemm2_shuffle_w4a16_fp16", "fp16", 2048, 768, 32),
)


# --- report ----------------------------------------------------------------------

@dataclass
class KernelBuild:
    kernel: str
    arch: str
    backend: str  # "hip" | "triton"
    status: str  # "ok" | "failed" | "unsupported" | "skipped"
    reason: str = ""
    log_tail: str = ""
    isa: str | None = None  # path of the ISA text
    code_object: str | None = None
    census: dict[str, int] = field(default_factory=dict)  # whole kernel text
    hot_loop: dict[str, int] = field(default_factory=dict)  # the hot loop only
    seconds: float = 0.0


@dataclass
class KernelBuildReport:
    out_dir: str
    toolchain: dict[str, str] = field(default_factory=dict)
    builds: list[KernelBuild] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No build failed (unsupported and skipped are not failures)."""
        return not any(b.status == "failed" for b in self.builds)

    def get(self, kernel: str, arch: str) -> KernelBuild | None:
        return next((b for b in self.builds if b.kernel == kernel and b.arch == arch), None)

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "ok": self.ok, "toolchain": self.toolchain,
                "builds": [dataclasses.asdict(b) for b in self.builds]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        lines = []
        for b in self.builds:
            extra = b.reason or ""
            if b.status == "ok":
                keys = ("v_dot2_f32_bf16", "v_dot2_f32_f16", "v_pk_fma_f16", "v_pk_add_f16",
                        "v_bfe_u32", "global_load_nt", "v_wmma_f32_16x16x16_f16", "v_wmma_f32_16x16x16_bf16")
                extra = " ".join(f"{k}={b.hot_loop[k]}" for k in keys if b.hot_loop.get(k))
                extra = f"hot loop: {extra}" if extra else ""
            lines.append(f"{b.backend:6} {b.kernel:32} {b.arch:8} {b.status:11} {extra}")
        return "\n".join(lines)


# --- ISA census -----------------------------------------------------------------

_LABEL = re.compile(r"^(\.LBB[0-9_]+):")
_BRANCH = re.compile(r"^\s*s_cbranch_\w+\s+(\.LBB[0-9_]+)")
_INSN = re.compile(r"^\s+([a-z][a-z0-9_]*)\b")


def _count(lines: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ln in lines:
        m = _INSN.match(ln)
        if not m or ln.lstrip().startswith("."):
            continue
        op = m.group(1)
        # gfx11 VOPD dual issue: `v_dual_X ... :: v_dual_Y ...` is two operations.
        ops = ["v_" + d for d in re.findall(r"\bv_dual_(\w+)", ln)] if op.startswith("v_dual_") else [op]
        for o in ops:
            base = re.sub(r"_e(32|64)$", "", o)
            if base == "v_dot2acc_f32_f16":
                base = "v_dot2_f32_f16"  # the accumulating (VOP2/VOPD) form of the same dot
            if base in CENSUS:
                counts[base] = counts.get(base, 0) + 1
        if (op.startswith("global_load") or op.startswith("buffer_load")) and (
                re.search(r"\bslc\b", ln) or re.search(r"\bnt\b", ln)):
            counts["global_load_nt"] = counts.get("global_load_nt", 0) + 1
    counts["instructions"] = sum(1 for ln in lines if _INSN.match(ln) and not ln.lstrip().startswith("."))
    return counts


def _functions(isa: str) -> dict[str, list[str]]:
    """Kernel symbol -> its instruction lines (from `name:` to `s_endpgm`)."""
    funcs: dict[str, list[str]] = {}
    cur: str | None = None
    for ln in isa.splitlines():
        m = re.match(r"^([A-Za-z_][\w.$]*):(\s|;|$)", ln)
        if m and not ln.startswith(".L"):
            cur = m.group(1)
            funcs[cur] = []
            continue
        if cur is not None:
            funcs[cur].append(ln)
            if ln.strip().startswith("s_endpgm"):
                cur = None
    return funcs


def _spans(isa: str, names: set[str]) -> list[str]:
    """The text of each kernel in `names`, from its label to the next kernel's label (so with the
    `; NumVgprs` / `; Occupancy` notes the compiler writes after it)."""
    out: list[str] = []
    cur: list[str] | None = None
    for ln in isa.splitlines():
        m = re.match(r"^([A-Za-z_][\w.$]*):(\s|;|$)", ln)
        if m and not ln.startswith(".L"):
            if cur is not None:
                out.append("\n".join(cur))
            cur = [ln] if m.group(1) in names else None
            continue
        if cur is not None:
            cur.append(ln)
    if cur is not None:
        out.append("\n".join(cur))
    return out


def hot_loop(lines: list[str]) -> list[str]:
    """The loop (label .. backward branch to it) that does the most dot/FMA work.

    Ties (and loops without any) go to the longest loop; a kernel with no
    backward branch yields []."""
    labels: dict[str, int] = {}
    loops: list[tuple[int, int]] = []
    for i, ln in enumerate(lines):
        m = _LABEL.match(ln)
        if m:
            labels[m.group(1)] = i
            continue
        m = _BRANCH.match(ln)
        if m and m.group(1) in labels:
            loops.append((labels[m.group(1)], i))
    if not loops:
        return []

    def work(span: tuple[int, int]) -> tuple[int, int]:
        body = lines[span[0]:span[1] + 1]
        dots = sum(1 for ln in body if re.search(r"\b(v_dot2|v_wmma|v_pk_fma|v_fma)", ln))
        return dots, span[1] - span[0]

    start, end = max(loops, key=work)
    return lines[start:end + 1]


def census(isa_text: str, only: tuple[str, ...] = ()) -> tuple[dict[str, int], dict[str, int]]:
    """(whole-kernel counts, hot-loop counts), summed over the kernels in the text (or over those
    whose symbol starts with one of `only`)."""
    whole: dict[str, int] = {}
    loop: dict[str, int] = {}
    funcs = _functions(isa_text)
    if only:
        funcs = {k: v for k, v in funcs.items() if k.startswith(only)}
        isa_text = "\n".join(_spans(isa_text, set(funcs)))  # with the compiler's notes after each
    # the compiler's own resource notes: register use and waves per SIMD (the launch-bounds effect)
    vgprs = [int(v) for v in re.findall(r"^\s*; NumVgprs: (\d+)", isa_text, re.M)]
    occ = [int(v) for v in re.findall(r"^\s*; Occupancy: (\d+)", isa_text, re.M)]
    if vgprs:
        whole["vgprs_max"] = max(vgprs)
    if occ:
        whole["occupancy_min"] = min(occ)
    for lines in funcs.values():
        for k, v in _count(lines).items():
            whole[k] = whole.get(k, 0) + v
        for k, v in _count(hot_loop(lines)).items():
            loop[k] = loop.get(k, 0) + v
    return whole, loop


# --- toolchains -----------------------------------------------------------------------

def find_hipcc() -> str | None:
    return shutil.which("hipcc") or (
        "/opt/rocm/bin/hipcc" if os.access("/opt/rocm/bin/hipcc", os.X_OK) else None)


def _hip_env() -> dict[str, str]:
    # Without HIP_PLATFORM=amd, hipcc takes the NVIDIA path when nvcc is installed.
    return {**os.environ, "HIP_PLATFORM": "amd"}


def clang_major(hipcc: str) -> int | None:
    try:
        r = subprocess.run([hipcc, "--version"], capture_output=True, text=True, timeout=60, env=_hip_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"clang version (\d+)", r.stdout + r.stderr)
    return int(m.group(1)) if m else None


def _bitcode_args() -> list[str]:
    for d in BITCODE_DIRS:
        if all(Path(d, f"{lib}.bc").is_file() for lib in BITCODE_LIBS):
            args = ["-nogpulib"]
            for lib in BITCODE_LIBS:
                args += ["-Xclang", "-mlink-builtin-bitcode", "-Xclang", str(Path(d, f"{lib}.bc"))]
            return args
    return []  # a full ROCm install finds its own device libs


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _unsupported_reason(arch: str, major: int | None) -> str | None:
    need = MIN_CLANG.get(arch)
    if need is None or major is None or major >= need:
        return None
    rocm = ROCM_FOR_CLANG.get(need, "a newer ROCm")
    return (f"this toolchain (clang {major}) cannot target {arch}: it needs clang >= {need}, i.e. "
            f"ROCm >= {rocm}; Debian 12's hipcc ships clang 15. Build {arch} with a ROCm >= {rocm} hipcc.")


def _unsupported_from_log(log: str) -> bool:
    return bool(re.search(r"(unsupported|invalid|unknown) (CUDA |HIP )?(gpu )?(arch|target|offload)", log, re.I)
                or "not a recognized processor" in log)


def build_hip(tree: Path, out_dir: Path, unit: HipUnit, arch: str, hipcc: str, major: int | None,
              timeout: int = 600) -> KernelBuild:

    kb = KernelBuild(unit.name, arch, "hip", "skipped")
    header = tree / unit.header
    if not header.is_file():
        kb.reason = f"{unit.header} not in this tree (entry not applied)"
        return kb
    why = _unsupported_reason(arch, major)
    if why:
        kb.status, kb.reason = "unsupported", why
        return kb
    src_dir = out_dir / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    src = src_dir / f"{unit.name}_inst.hip"
    src.write_text(f'#include "{header.name}"\nnamespace {HIP_NAMESPACE} {{\n'
                   + "\n".join(unit.instantiations) + "\n}\n")
    base = [hipcc, "-std=c++17", "-O3", f"--offload-arch={arch}", *_bitcode_args(),
            "-I", str(header.parent), "--cuda-device-only"]
    _compile_and_census(kb, base, src, out_dir, unit.name, arch, major, timeout)
    return kb


def build_hip_source(tree: Path, out_dir: Path, unit: HipSource, arch: str, hipcc: str, major: int | None,
                     timeout: int = 1200) -> KernelBuild:
    """Compile a whole vLLM source device-only (see HipSource); census over `unit.census_kernels`."""

    from .hip_standins import write_standins

    kb = KernelBuild(unit.name, arch, "hip", "skipped")
    source = tree / unit.source
    if not source.is_file():
        kb.reason = f"{unit.source} not in this tree"
        return kb
    why = _unsupported_reason(arch, major)
    if why:
        kb.status, kb.reason = "unsupported", why
        return kb
    text = source.read_text()
    for pattern, repl, what in unit.edits:
        text, n = re.subn(pattern, repl, text)
        if n == 0:
            kb.status = "failed"
            kb.reason = (f"{unit.source} changed: the build's edit for {what} ({pattern!r}) no longer matches; "
                         "revisit HIP_SOURCES in manager/kernels.py")
            return kb
    src_dir = out_dir / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    src = src_dir / source.name
    src.write_text(text)
    standins = write_standins(out_dir / "standins")
    # stand-ins first; then the source's own folder (its "x.h" and "../x.h" includes) and csrc/
    base = [hipcc, "-std=c++17", "-O3", f"--offload-arch={arch}", *_bitcode_args(), "-I", str(standins),
            "-I", str(source.parent), "-I", str(tree / "csrc"), *[f"-D{d}" for d in unit.defines],
            "--cuda-device-only", "-Wno-unused-command-line-argument"]
    # Two compiles, as for the headers: -save-temps (one compile) would go through clang 15's
    # assembler, which rejects some gfx11 v_mad_u64_u32 its own code generator emits here.
    if not _compile_and_census(kb, base, src, out_dir, unit.name, arch, major, timeout, unit.census_kernels):
        return kb
    if not kb.census.get("instructions"):
        kb.reason = "compiled; none of the census kernels is instantiated in this tree"
    return kb


def _compile_and_census(kb: KernelBuild, base: list[str], src: Path, out_dir: Path, name: str, arch: str,
                        major: int | None, timeout: int, only: tuple[str, ...] = ()) -> bool:
    """Compile (see _compile), then time and census the ISA into kb (over `only` kernels when given)."""
    import time

    t0 = time.monotonic()
    if not _compile(kb, base, src, out_dir, name, arch, major, timeout):
        return False
    kb.seconds = round(time.monotonic() - t0, 2)
    kb.status = "ok"
    assert kb.isa is not None  # _compile set it or returned False
    kb.census, kb.hot_loop = census(Path(kb.isa).read_text(), only)
    return True


def _compile(kb: KernelBuild, base: list[str], src: Path, out_dir: Path, name: str, arch: str,
             major: int | None, timeout: int) -> bool:
    """`-S` (ISA) then `-c` (code object); on failure fills kb and returns False."""
    isa = out_dir / f"{name}.{arch}.s"
    obj = out_dir / f"{name}.{arch}.o"
    for flag, dst in (("-S", isa), ("-c", obj)):
        try:
            r = subprocess.run([*base, flag, str(src), "-o", str(dst)], capture_output=True, text=True,
                               timeout=timeout, env=_hip_env())
        except subprocess.TimeoutExpired:
            kb.status, kb.reason = "failed", f"hipcc timed out after {timeout}s"
            return False
        log = r.stdout + r.stderr
        (out_dir / f"{name}.{arch}{flag}.log").write_text(log)
        if r.returncode != 0 or not dst.is_file():
            if _unsupported_from_log(log):
                kb.status = "unsupported"
                kb.reason = f"hipcc cannot target {arch} (clang {major}); needs a newer ROCm"
            else:
                kb.status, kb.reason = "failed", f"hipcc {flag} exited {r.returncode}"
            kb.log_tail = _tail(log)
            return False
    kb.isa, kb.code_object = str(isa), str(obj)
    return True


def build_triton(tree: Path, out_dir: Path, variant: TritonVariant, arch: str) -> KernelBuild:
    import time

    kb = KernelBuild(variant.name, arch, "triton", "skipped")
    src = tree / FUSED_MOE_PY
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        kb.reason = f"triton not importable: {e}"
        return kb
    from .triton_src import load_triton_kernels, triton_moe_config

    try:
        mod = load_triton_kernels(src, cache_dir=out_dir / "src")
    except (OSError, LookupError) as e:
        kb.reason = str(e)
        return kb
    fn = mod.fused_moe_kernel_gptq_awq
    if "use_shuffle_w4a16" not in fn.arg_names:
        kb.reason = "fused_moe_kernel_gptq_awq has no use_shuffle_w4a16 (entry not applied)"
        return kb
    dt = variant.dtype
    cfg = triton_moe_config(variant.N, variant.group_size)
    num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    ptrs = {"a_ptr": f"*{dt}", "b_ptr": "*i32", "c_ptr": f"*{dt}", "b_scale_ptr": f"*{dt}",
            "b_zp_ptr": "*i32", "topk_weights_ptr": "*fp32", "sorted_token_ids_ptr": "*i32",
            "expert_ids_ptr": "*i32", "num_tokens_post_padded_ptr": "*i32"}
    constexprs = {
        "N": variant.N, "K": variant.K, "block_k_diviable": True, "group_size": variant.group_size,
        "MUL_ROUTED_WEIGHT": False, "top_k": 8,
        "compute_type": triton.language.bfloat16 if dt == "bf16" else triton.language.float16,
        "has_zp": False, "use_int4_w4a16": True, "use_int8_w8a16": False, "use_shuffle_w4a16": True,
        **cfg,
    }
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = ptrs.get(name, "i32")
    t0 = time.monotonic()
    try:
        compiled = triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=constexprs),
            target=GPUTarget("hip", arch, 32),
            options={"num_warps": num_warps, "num_stages": num_stages},
        )
    except Exception as e:  # noqa: BLE001 - report any compiler failure as data
        msg = f"{type(e).__name__}: {e}"
        kb.status = "unsupported" if re.search(r"(unsupported|unknown).*(arch|target)", msg, re.I) else "failed"
        kb.reason, kb.log_tail = "triton.compile failed", _tail(msg)
        return kb
    kb.seconds = round(time.monotonic() - t0, 2)
    isa_text = compiled.asm["amdgcn"]
    isa = out_dir / f"{variant.name}.{arch}.amdgcn"
    isa.write_text(isa_text)
    obj = out_dir / f"{variant.name}.{arch}.hsaco"
    obj.write_bytes(compiled.asm["hsaco"])
    kb.status, kb.isa, kb.code_object = "ok", str(isa), str(obj)
    kb.census, kb.hot_loop = census(isa_text)
    return kb


def check_kernels(tree: Path, out_dir: Path, *, hip_archs=("gfx1100", "gfx1151"),
                  triton_archs=("gfx1100", "gfx1151")) -> KernelBuildReport:
    """Build the series' gfx11 device code found in `tree`; ISA and code objects go to `out_dir`."""
    tree, out_dir = Path(tree), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = KernelBuildReport(str(out_dir))
    hipcc = find_hipcc()
    major = clang_major(hipcc) if hipcc else None
    report.toolchain["hipcc"] = hipcc or HIPCC_HINT
    if major is not None:
        report.toolchain["clang"] = str(major)
    try:  # metadata only: importing triton here would fix its interpret mode for the caller
        from importlib.metadata import version

        report.toolchain["triton"] = version("triton")
    except Exception:  # noqa: BLE001
        report.toolchain["triton"] = "not installed"
    for unit in hip_units(tree):
        for arch in hip_archs:
            if hipcc is None:
                report.builds.append(KernelBuild(unit.name, arch, "hip", "skipped", reason=HIPCC_HINT))
            else:
                report.builds.append(build_hip(tree, out_dir, unit, arch, hipcc, major))
    for src_unit in HIP_SOURCES:
        for arch in hip_archs:
            if hipcc is None:
                report.builds.append(KernelBuild(src_unit.name, arch, "hip", "skipped", reason=HIPCC_HINT))
            else:
                report.builds.append(build_hip_source(tree, out_dir, src_unit, arch, hipcc, major))
    if triton_archs:
        report.builds += _triton_in_child(tree, out_dir, tuple(triton_archs))
    (out_dir / "report.json").write_text(report.to_json())
    return report


def _triton_in_child(tree: Path, out_dir: Path, archs: tuple[str, ...]) -> list[KernelBuild]:
    """Triton AOT builds in a fresh interpreter.

    @triton.jit decides at decoration time whether it is interpreted (TRITON_INTERPRET), and a
    caller may have imported triton either way; a child process with that variable removed
    compiles for real, and keeps Triton's memory out of the caller.
    """
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    argv = [sys.executable, "-m", "vpatch.manager.kernels", "--triton-worker", str(tree), str(out_dir),
            "--archs", ",".join(archs)]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    try:
        return [KernelBuild(**d) for d in json.loads(r.stdout.strip().splitlines()[-1])]
    except (ValueError, IndexError, TypeError):
        tail = _tail(r.stderr or r.stdout)
        return [KernelBuild(v.name, a, "triton", "failed", reason=f"triton worker exited {r.returncode}",
                            log_tail=tail) for v in TRITON_VARIANTS for a in archs]


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Build the series' gfx11 kernels (device-only) from a vLLM tree.")
    p.add_argument("tree", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--triton-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--archs", default="gfx1100,gfx1151", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.triton_worker:  # child of _triton_in_child: one JSON line on stdout
        a.out_dir.mkdir(parents=True, exist_ok=True)
        builds = [build_triton(a.tree, a.out_dir, v, arch) for v in TRITON_VARIANTS for arch in a.archs.split(",")]
        print(json.dumps([dataclasses.asdict(b) for b in builds]))
        return 0
    rep = check_kernels(a.tree, a.out_dir)
    print(rep.to_json() if a.json else rep.summary())
    return 0 if rep.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
