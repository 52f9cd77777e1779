"""Torch reference for the series' W4A16 MoE kernels (CPU, no vLLM needed).

Layouts (see the ``moe-int4-wvsplitk`` entry):

* GPTQ / compressed-tensors: ``[E, K // 8, N]`` int32, eight consecutive k of
  one output column per word, nibble ``j`` = k offset ``j``.
* skinny shuffled: ``[E, N, K // 8]`` int32, one row per output feature, the
  eight k of a word in ExLlama order: nibble ``j`` holds k offset
  ``SHUFFLE[j] = (j % 4) * 2 + j // 4`` (nibbles 0..3 = k0,k2,k4,k6 and
  4..7 = k1,k3,k5,k7).
* scales: ``[E, N, K // G]``, symmetric, zero point 8: ``w = (q - 8) * s``.

Besides the math, this module mirrors the host-side launch arithmetic of the
HIP kernels (grid, tiles, expert blocks, the m-stripes each wave owns) and
emulates their loops in torch, so that tests can check on a CPU that every
output is written exactly once and equals the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# nibble j of a shuffled word holds k offset SHUFFLE[j]
SHUFFLE = (0, 2, 4, 6, 1, 3, 5, 7)
ZERO_POINT = 8


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> int32 with the same bits."""
    x = x & 0xFFFFFFFF
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def _nibbles(words: torch.Tensor) -> torch.Tensor:
    """int32 [..., W] -> int64 [..., W, 8]: nibble j of each word."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(8, dtype=torch.int64, device=words.device) * 4
    return (w.unsqueeze(-1) >> shifts) & 0xF


def _pack(nib: torch.Tensor) -> torch.Tensor:
    """int64 [..., W, 8] nibbles -> int32 [..., W]."""
    shifts = torch.arange(8, dtype=torch.int64, device=nib.device) * 4
    return _to_int32((nib.to(torch.int64) << shifts).sum(-1))


# --- packing -------------------------------------------------------------


def pack_gptq(q: torch.Tensor) -> torch.Tensor:
    """q [E, K, N] in 0..15 -> GPTQ [E, K // 8, N] int32."""
    E, K, N = q.shape
    nib = q.to(torch.int64).reshape(E, K // 8, 8, N).permute(0, 1, 3, 2)
    return _pack(nib)


def unpack_gptq(w: torch.Tensor) -> torch.Tensor:
    """GPTQ [E, K // 8, N] int32 -> q [E, K, N] int64."""
    E, KW, N = w.shape
    return _nibbles(w).permute(0, 1, 3, 2).reshape(E, KW * 8, N)


def pack_skinny_shuffled(q: torch.Tensor) -> torch.Tensor:
    """q [E, N, K] in 0..15 -> skinny shuffled [E, N, K // 8] int32."""
    E, N, K = q.shape
    grouped = q.to(torch.int64).reshape(E, N, K // 8, 8)
    return _pack(grouped[..., list(SHUFFLE)])


def unpack_skinny_shuffled(w: torch.Tensor) -> torch.Tensor:
    """skinny shuffled [E, N, K // 8] int32 -> q [E, N, K] int64."""
    E, N, KW = w.shape
    nib = _nibbles(w)
    out = torch.empty_like(nib)
    out[..., list(SHUFFLE)] = nib
    return out.reshape(E, N, KW * 8)


def gptq_to_skinny_shuffled(w: torch.Tensor) -> torch.Tensor:
    """GPTQ [E, K // 8, N] -> skinny shuffled [E, N, K // 8] (what load does)."""
    return pack_skinny_shuffled(unpack_gptq(w).transpose(1, 2))


def skinny_shuffled_to_gptq(w: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`gptq_to_skinny_shuffled`."""
    return pack_gptq(unpack_skinny_shuffled(w).transpose(1, 2))


# --- dequant and GEMV ------------------------------------------------------


def dequant(q: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """q [E, N, K], scales [E, N, K // G] -> fp32 [E, N, K] = (q - 8) * s."""
    s = scales.to(torch.float32).repeat_interleave(group_size, dim=-1)
    return (q.to(torch.float32) - ZERO_POINT) * s


def dequant_skinny(w: torch.Tensor, scales: torch.Tensor, group_size: int):
    return dequant(unpack_skinny_shuffled(w), scales, group_size)


def random_w4a16(E: int, N: int, K: int, group_size: int, dtype, seed: int = 0):
    """Random symmetric int4 weights: (q [E, N, K], scales [E, N, K // G])."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (E, N, K), generator=g)
    scales = (torch.rand(E, N, K // group_size, generator=g) * 0.02 + 0.005).to(dtype)
    return q, scales


def moe_gemm_ref(
    a: torch.Tensor,
    w: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor | None = None,
    a_per_slot: bool = False,
) -> torch.Tensor:
    """Per-slot expert GEMV in fp32.

    a: [T, K] (GEMM1) or [T * top_k, K] (``a_per_slot``, GEMM2);
    w: dequantized fp32 [E, N, K]; returns [T * top_k, N] in slot order
    (slot = token * top_k + j), multiplied by topk_weights when given.
    """
    T, top_k = topk_ids.shape
    out = torch.empty(T * top_k, w.shape[1], dtype=torch.float32)
    for t in range(T):
        for j in range(top_k):
            s = t * top_k + j
            row = a[s] if a_per_slot else a[t]
            y = w[topk_ids[t, j]] @ row.to(torch.float32)
            if topk_weights is not None:
                y = y * topk_weights[t, j].to(torch.float32)
            out[s] = y
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    g, u = x[..., :d].to(torch.float32), x[..., d:].to(torch.float32)
    return g * torch.sigmoid(g) * u


def fused_moe_ref(x, w13, w2, topk_ids, topk_weights) -> torch.Tensor:
    """Full MoE in fp32: sum_j w_j * W2[e_j] @ silu_and_mul(W13[e_j] @ x)."""
    T, top_k = topk_ids.shape
    h = moe_gemm_ref(x, w13, topk_ids)
    act = silu_and_mul(h)
    y = moe_gemm_ref(act, w2, topk_ids, topk_weights, a_per_slot=True)
    return y.view(T, top_k, -1).sum(1)


def moe_align_block_size_ref(topk_ids: torch.Tensor, block_size: int, num_experts: int):
    """Pure-torch moe_align_block_size: (sorted_token_ids, expert_ids, ntp).

    Slots are grouped by expert, each expert padded to a multiple of
    block_size with the sentinel ``topk_ids.numel()``; the buffers are sized
    like vLLM's (worst case), the tail beyond num_tokens_post_padded unused.
    """
    flat = topk_ids.flatten().to(torch.int64)
    numel = flat.numel()
    max_padded = numel + num_experts * (block_size - 1)
    max_padded = (max_padded + block_size - 1) // block_size * block_size
    sorted_ids = torch.full((max_padded,), numel, dtype=torch.int32)
    expert_ids = torch.full((max_padded // block_size,), -1, dtype=torch.int32)
    pos = 0
    for e in range(num_experts):
        slots = (flat == e).nonzero().flatten()
        if slots.numel() == 0:
            continue
        padded = (slots.numel() + block_size - 1) // block_size * block_size
        sorted_ids[pos : pos + slots.numel()] = slots.to(torch.int32)
        expert_ids[pos // block_size : (pos + padded) // block_size] = e
        pos += padded
    return sorted_ids, expert_ids, torch.tensor([pos], dtype=torch.int32)


# --- mirror of the HIP host wrapper (moe_wvsplitk_int4.cu) -------------------

LDS_SMALL, LDS_LARGE = 8192, 32768


@dataclass(frozen=True)
class WvSplitKPlan:
    grid: tuple[int, int]  # (CuCount, expert blocks walked)
    block: tuple[int, int]  # (THRDS, WvPrGrp)
    n_rows: int  # token rows per expert block (template N)
    lds_elems: int
    a_row_div: int
    yt: int = 2
    a_chunk: int = 16
    unrl: int = 4


def wvsplitk_plan(
    a_rows: int,
    K: int,
    N_out: int,
    num_valid: int,
    top_k: int,
    block_size_m: int,
    n_expert_blocks: int,
    cu_count: int,
    scattered: bool = True,
) -> WvSplitKPlan:
    """The launch the host wrapper picks (same checks, same arithmetic)."""
    if N_out % 2 or K % 16:
        raise ValueError("N must be even and K a multiple of 16")
    num_tokens = num_valid // top_k
    a_row_div = 1 if a_rows == num_valid else top_k
    if a_rows * a_row_div != num_valid:
        raise ValueError("a must have num_tokens or num_tokens * top_k rows")
    n_rows = min(num_tokens if scattered else block_size_m, block_size_m)
    if not 1 <= n_rows <= 5:
        raise ValueError(f"decode kernel: at most 5 rows per block, got {n_rows}")
    if K * n_rows > LDS_LARGE:
        raise ValueError("K * rows exceeds LDS")
    em = n_expert_blocks
    em = min(em, num_valid) if scattered else min(em, -(-num_valid // block_size_m))
    lds = LDS_SMALL if K * n_rows <= LDS_SMALL else LDS_LARGE
    return WvSplitKPlan((cu_count, em), (32, 4), n_rows, lds, a_row_div)


def emulate_wvsplitk(
    plan: WvSplitKPlan,
    a: torch.Tensor,
    b_q: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    sorted_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    ntp: int,
    block_size_m: int,
    num_valid: int,
    topk_weights: torch.Tensor | None = None,
    scattered: bool = True,
):
    """Walk the kernel's grid as the device would; returns (c, write_count).

    Each (block, wave) computes the m-stripe the kernel assigns to it, in
    the kernel's k chunking (A_CHUNK per lane, per-chunk group scale), from
    the shuffled words decoded nibble by nibble.
    """
    THRDS, WV = plan.block
    K = a.shape[1]
    M = b_q.shape[1]
    c = torch.full((num_valid, M), float("nan"))
    writes = torch.zeros((num_valid, M), dtype=torch.int32)
    q_all = unpack_skinny_shuffled(b_q).to(torch.float32) - ZERO_POINT
    chunk_starts = range(0, K, plan.a_chunk)
    for eb in range(plan.grid[1]):
        if eb * block_size_m >= ntp:
            continue
        e = int(expert_ids[eb])
        slots = []
        for n in range(plan.n_rows):
            idx = eb * block_size_m + n
            s = num_valid if n >= block_size_m else (int(sorted_ids[idx]) if scattered else idx)
            slots.append(s)
        for bx in range(plan.grid[0]):
            for wy in range(WV):
                m = (bx * WV + wy) * plan.yt
                while m < M:
                    for s in slots:
                        if s >= num_valid:
                            continue
                        row = a[s // plan.a_row_div].to(torch.float32)
                        for y in range(plan.yt):
                            if e < 0:
                                val = 0.0
                            else:
                                acc = 0.0
                                for k_ in chunk_starts:
                                    g = k_ // group_size
                                    part = (q_all[e, m + y, k_ : k_ + plan.a_chunk] * row[k_ : k_ + plan.a_chunk]).sum()
                                    acc += float(part) * float(scales[e, m + y, g])
                                tw = float(topk_weights.flatten()[s]) if topk_weights is not None else 1.0
                                val = acc * tw
                            c[s, m + y] = val
                            writes[s, m + y] += 1
                    m += plan.grid[0] * WV * plan.yt
    return c, writes


# --- mirror of the kernels' bf16 output rounding (num<bf16_t>::from_f) -------


def bf16_from_f32_bits(u: int) -> int:
    """The 16 bf16 bits the HIP kernels store for the fp32 bit pattern `u`.

    Round to nearest even; a NaN stays a quiet NaN (a plain RTNE carry turns a NaN whose payload
    sits in the low 16 bits into +-Inf, and 0xFFFFxxxx into +0)."""
    u &= 0xFFFFFFFF
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return ((u >> 16) | 0x0040) & 0xFFFF
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


# --- mirror of the megakernel's per-block m-stripes (moe_megakernel.cu) ------


@dataclass(frozen=True)
class MegaPlan:
    grid: int
    wv: int
    yt: int
    iters: int  # m-stripe iterations per wave
    per_block_m: int  # partials kept per slot per workgroup (LDS)


MEGA_PARTIAL_LDS_FLOATS = 2048


def megakernel_plan(M: int, top_k: int, cu_count: int, wv: int = 16, yt: int = 2) -> MegaPlan:
    stride = cu_count * wv * yt
    iters = -(-M // stride)
    per_block_m = iters * wv * yt
    if per_block_m * top_k > MEGA_PARTIAL_LDS_FLOATS:
        raise ValueError("partials exceed the LDS slab; launch more workgroups")
    return MegaPlan(cu_count, wv, yt, iters, per_block_m)


def megakernel_owner(plan: MegaPlan, block: int, local: int) -> int:
    """Global output row of partial `local` of workgroup `block`."""
    it, rem = divmod(local, plan.wv * plan.yt)
    return (it * plan.grid + block) * plan.wv * plan.yt + rem


def emulate_megakernel(plan: MegaPlan, act, b_q, scales, group_size, topk_ids, topk_weights, fuse_silu=False):
    """GEMM2 + top-k weighted reduce for one token, walked per workgroup."""
    top_k = topk_ids.numel()
    M = b_q.shape[1]
    out = torch.full((M,), float("nan"))
    writes = torch.zeros(M, dtype=torch.int32)
    w = dequant_skinny(b_q, scales, group_size)
    rows = silu_and_mul(act) if fuse_silu else act.to(torch.float32)
    for b in range(plan.grid):
        part = torch.zeros(top_k, plan.per_block_m)
        for s in range(top_k):
            e = int(topk_ids.flatten()[s])
            if e < 0:  # expert on another rank: the kernel skips the slot
                continue
            for local in range(plan.per_block_m):
                m = megakernel_owner(plan, b, local)
                if m < M:
                    part[s, local] = w[e, m] @ rows[s]
        for local in range(plan.per_block_m):
            m = megakernel_owner(plan, b, local)
            if m < M:
                live = (topk_ids.flatten() >= 0).to(torch.float32)
                out[m] = (part[:, local] * topk_weights.flatten().to(torch.float32) * live).sum()
                writes[m] += 1
    return out, writes


# --- loading the series' Triton kernel without importing vLLM ---------------

# The kernel loader lives in the manager (the gfx11 AOT build uses it); re-exported here for the tests.
from vpatch.manager.triton_src import TRITON_KERNELS, load_triton_kernels, triton_moe_config  # noqa: E402,F401


def run_triton_moe_gemm(
    kern,
    a,
    b,
    scales,
    c,
    sorted_ids,
    expert_ids,
    ntp,
    top_k,
    group_size,
    config,
    topk_weights=None,
    shuffle=True,
    b_zp=None,
):
    """Launch fused_moe_kernel_gptq_awq like invoke_fused_moe_wna16_triton_kernel.

    b: skinny [E, N, K // 8] int32 (shuffle) or upstream [E, N, K // 2] uint8.
    c: [T, top_k, N] (GEMM1) or [T * top_k, 1, N] (GEMM2, top_k = 1).
    """
    import triton
    import triton.language as tl

    M = a.shape[0]
    num_tokens = M * top_k
    EM = sorted_ids.shape[0]
    bm = config["BLOCK_SIZE_M"]
    if M < bm:
        EM = min(EM, M * top_k * bm)
    N = b.shape[1]
    cfg = {k: v for k, v in config.items()}
    grid = (triton.cdiv(EM, bm) * triton.cdiv(N, cfg["BLOCK_SIZE_N"]),)
    compute_type = tl.bfloat16 if a.dtype == torch.bfloat16 else tl.float16
    extra = {"use_shuffle_w4a16": True} if shuffle else {}
    kern.fused_moe_kernel_gptq_awq[grid](
        a, b, c, scales, b_zp, topk_weights, sorted_ids, expert_ids, ntp,
        N, a.shape[1], EM, num_tokens,
        a.stride(0), a.stride(1),
        b.stride(0), b.stride(2), b.stride(1),
        c.stride(1), c.stride(2),
        scales.stride(0), scales.stride(2), scales.stride(1),
        0, 0, 0,
        block_k_diviable=a.shape[1] % cfg["BLOCK_SIZE_K"] == 0,
        group_size=group_size,
        MUL_ROUTED_WEIGHT=topk_weights is not None,
        top_k=top_k,
        compute_type=compute_type,
        has_zp=b_zp is not None,
        use_int4_w4a16=True,
        use_int8_w8a16=False,
        **extra,
        **cfg,
    )
    return c


# --- a minimal patched tree for the kernel tests and the gfx11 build ---------

KERNEL_ENTRIES = ("moe-int4-wvsplitk", "fused-moe-hybrid-w4a16", "moe-int4-bf16-dequant", "moe-int4-bf16-sub-nocanon",
                  "moe-int4-dot2")
# the megakernel's tuning steps, laid on top of the overlay (only their csrc/rocm/moe_* hunks)
MEGA_STEP_ENTRIES = ("moe-megakernel-waves-8", "moe-megakernel-waves-12", "moe-megakernel-waves-16",
                     "moe-megakernel-achunk-32", "moe-megakernel-act-sum")
KERNEL_PATHS = ("vllm/model_executor/layers/fused_moe/fused_moe.py",
                "vllm/model_executor/layers/fused_moe/experts/hybrid_w4a16_moe.py",
                "csrc/rocm/moe_*")
# the dense wvSplitK GEMV: the base's source and the headers it includes from csrc/, then the entry
DENSE_ENTRY = "dense-wvsplitk-n1-tune"
DENSE_BASE_PATHS = ("csrc/rocm/skinny_gemms.cu", "csrc/cuda_compat.h", "csrc/core/batch_invariant.hpp")
DENSE_PATHS = ("csrc/rocm/skinny_gemms.cu", "csrc/rocm/wvsplitk_tune.h")


def build_kernel_tree(series_root, dest, base: str = "v0.28.0"):
    """The kernel files of base + the series' kernel entries, in `dest`.

    Only the files the kernels live in are materialised: the base's
    fused_moe.py and skinny_gemms.cu (from the PyPI release cache of
    ``vpatch.manager.sources``, downloaded once if missing), the MoE GEMV patch entries
    and the dense wvSplitK entry applied with ``git apply --include``, then the
    megakernel overlay laid down.
    ``$VPATCH_VLLM_TREE`` (a fully patched tree, e.g. a workspace) is used as it
    is when set. Raises RuntimeError with the reason when no base is reachable.
    """
    import io
    import os
    import shutil
    import tarfile
    from pathlib import Path

    from vpatch.manager.git import run_git, run_git_bytes

    given = os.environ.get("VPATCH_VLLM_TREE")
    if given:
        return Path(given)
    series_root, dest = Path(series_root), Path(dest)
    if (dest / ".vpatch-kernel-tree").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    try:
        from vpatch.manager.sources import PypiSource

        src = PypiSource("pypi")
        src.ensure(base)
        repo = src.repo()
    except Exception as e:  # noqa: BLE001 - any failure means: no base here
        raise RuntimeError(f"no vLLM {base} source reachable ({type(e).__name__}: {e}); "
                           "set VPATCH_VLLM_TREE to a patched tree") from e
    tar = run_git_bytes("--git-dir", str(repo), "archive", "--format=tar", base, "--", KERNEL_PATHS[0],
                        *DENSE_BASE_PATHS)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(dest, filter="data")
    for entry in KERNEL_ENTRIES:
        p = run_git("apply", *[f"--include={p}" for p in KERNEL_PATHS],
                    str(series_root / "patches" / f"{entry}.patch"), cwd=dest, check=False)
        if not p.ok:
            raise RuntimeError(f"{entry}.patch does not apply to {base}'s kernel files: {p.err}")
    dense = series_root / "patches" / f"{DENSE_ENTRY}.patch"
    if dense.is_file():
        p = run_git("apply", *[f"--include={q}" for q in DENSE_PATHS], str(dense), cwd=dest, check=False)
        if not p.ok:
            raise RuntimeError(f"{DENSE_ENTRY}.patch does not apply to {base}'s skinny_gemms.cu: {p.err}")
    overlay = series_root / "overlay" / "moe-megakernel"
    if overlay.is_dir():
        shutil.copytree(overlay, dest, dirs_exist_ok=True)
        for entry in MEGA_STEP_ENTRIES:
            patch = series_root / "patches" / f"{entry}.patch"
            if not patch.is_file():
                continue
            p = run_git("apply", "--include=csrc/rocm/moe_*", str(patch), cwd=dest, check=False)
            if not p.ok:
                raise RuntimeError(f"{entry}.patch does not apply to the megakernel files: {p.err}")
    (dest / ".vpatch-kernel-tree").write_text(base + "\n")
    return dest
