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
                    for n, s in enumerate(slots):
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
            for local in range(plan.per_block_m):
                m = megakernel_owner(plan, b, local)
                if m < M:
                    part[s, local] = w[e, m] @ rows[s]
        for local in range(plan.per_block_m):
            m = megakernel_owner(plan, b, local)
            if m < M:
                out[m] = (part[:, local] * topk_weights.flatten().to(torch.float32)).sum()
                writes[m] += 1
    return out, writes


# --- loading the series' Triton kernel without importing vLLM ---------------

TRITON_KERNELS = ("write_zeros_to_output", "unshuffle_w4a16", "fused_moe_kernel_gptq_awq")


def load_triton_kernels(fused_moe_py, names=TRITON_KERNELS, cache_dir=None):
    """Import just the named @triton.jit functions of a (patched) fused_moe.py.

    fused_moe.py imports the whole of vLLM; the kernels themselves need only
    triton. Their source is cut out with ``ast`` (decorators included) and
    written to a small module that imports triton directly, so Triton (and
    TRITON_INTERPRET=1, which needs the source file) sees the exact code of
    the patched tree. Returns a namespace with the functions.
    """
    import ast
    import hashlib
    import importlib.util
    import tempfile
    from pathlib import Path

    src = Path(fused_moe_py).read_text()
    lines = src.splitlines(keepends=True)
    found = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            found[node.name] = "".join(lines[start - 1 : node.end_lineno])
    missing = [n for n in names if n not in found]
    if missing:
        raise LookupError(f"{fused_moe_py}: no {', '.join(missing)} (is the patch applied?)")
    body = "import torch\nimport triton\nimport triton.language as tl\n\n\n" + "\n\n".join(
        found[n] for n in names
    )
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    d = Path(cache_dir or tempfile.gettempdir()) / "vpatch-w4a16-kernels"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"fused_moe_kernels_{digest}.py"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(body)
        tmp.replace(path)
    spec = importlib.util.spec_from_file_location(f"vpatch_w4a16_{digest}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def triton_moe_config(N: int, group_size: int, block_m: int = 64) -> dict:
    """The hybrid entry's per-shape prefill config (mirrors _triton_config)."""
    if N < 1792:  # gate_up (N=1536 on Qwen3-Omni)
        cfg = dict(BLOCK_SIZE_N=32, num_warps=2, num_stages=2)
    else:  # down (N=2048)
        cfg = dict(BLOCK_SIZE_N=128, num_warps=4, num_stages=1)
    return dict(BLOCK_SIZE_M=block_m, BLOCK_SIZE_K=min(group_size, 64), GROUP_SIZE_M=1, SPLIT_K=1, **cfg)


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

KERNEL_ENTRIES = ("moe-int4-wvsplitk", "fused-moe-hybrid-w4a16")
KERNEL_PATHS = ("vllm/model_executor/layers/fused_moe/fused_moe.py",
                "vllm/model_executor/layers/fused_moe/experts/hybrid_w4a16_moe.py",
                "csrc/rocm/moe_*")


def build_kernel_tree(series_root, dest, base: str = "v0.28.0"):
    """The kernel files of base + the series' kernel entries, in `dest`.

    Only the files the kernels live in are materialised: the base's
    fused_moe.py (from the PyPI release cache of ``vpatch.manager.sources``,
    downloaded once if missing), the two patch entries applied with
    ``git apply --include``, then the megakernel overlay laid down.
    ``$VPATCH_VLLM_TREE`` (a fully patched tree, e.g. a workspace) is used as it
    is when set. Raises RuntimeError with the reason when no base is reachable.
    """
    import io
    import os
    import shutil
    import subprocess
    import tarfile
    from pathlib import Path

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
    r = subprocess.run(["git", "--git-dir", str(repo), "archive", "--format=tar", base, "--", KERNEL_PATHS[0]],
                       capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        tf.extractall(dest, filter="data")
    for entry in KERNEL_ENTRIES:
        argv = ["git", "apply", *[f"--include={p}" for p in KERNEL_PATHS],
                str(series_root / "patches" / f"{entry}.patch")]
        p = subprocess.run(argv, cwd=dest, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{entry}.patch does not apply to {base}'s kernel files: {p.stderr.strip()}")
    overlay = series_root / "overlay" / "moe-megakernel"
    if overlay.is_dir():
        shutil.copytree(overlay, dest, dirs_exist_ok=True)
    (dest / ".vpatch-kernel-tree").write_text(base + "\n")
    return dest
