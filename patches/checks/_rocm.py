"""A ROCm stand-in for the effect checks of the gfx11 kernel entries (CPU torch, no GPU).

* ``rocm_platform()``: a Platform of vLLM's own interface with the ROCm enum (``is_rocm()`` and
  ``is_cuda_alike()`` true), to put where a module looks ``current_platform`` up.
* ``fake_rocm_module(arch)``: ``vllm.platforms.rocm`` cannot be imported with CPU torch; this
  module answers ``on_gfx1100`` / ``on_gfx1151`` / ``on_gfx1x`` ... for the arch given.
* ``RocmOps``: the series' ``_rocm_C`` ops registered for real with ``torch.library`` (schemas
  as in csrc/rocm/torch_bindings.cpp), CPU implementations that record each call and compute the
  op's result in fp32 from its documented semantics, so vLLM's own Python dispatch
  (``vllm._custom_ops`` -> ``torch.ops._rocm_C.*``) is what is exercised, end to end.
* ``moe_align_block_size_ref``, the W4A16 reference (skinny shuffled layout, symmetric scales).

What this cannot show: the HIP kernels' own speed or numerics (the gfx11 device build and the
host-arithmetic mirror in vpatch's tests cover those), nor a real ROCm platform object.
"""
from __future__ import annotations

import contextlib
import os
import sys
import types

SHUFFLE = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble j of a skinny word holds k offset SHUFFLE[j]


def rocm_platform():
    from vllm.platforms.interface import Platform, PlatformEnum

    class _Rocm(Platform):
        _enum = PlatformEnum.ROCM
        device_name = "rocm"
        device_type = "cuda"
        dispatch_key = "CUDA"

    return _Rocm()


def fake_rocm_module(arch: str) -> types.ModuleType:
    m = types.ModuleType("vllm.platforms.rocm")
    m.__dict__.update(
        _GCN_ARCH=arch,
        on_gfx1x=lambda: arch.startswith(("gfx11", "gfx12")),
        on_gfx11=lambda: arch.startswith("gfx11"),
        on_gfx1100=lambda: arch == "gfx1100",
        on_gfx1151=lambda: arch == "gfx1151",
        on_gfx12x=lambda: arch.startswith("gfx12"),
        on_gfx9=lambda: arch in ("gfx90a", "gfx942", "gfx950"),
        on_mi3xx=lambda: arch in ("gfx942", "gfx950"),
    )
    return m


@contextlib.contextmanager
def rocm_arch(arch: str):
    """`from vllm.platforms.rocm import on_gfx1151` answers for `arch` inside the block."""
    import vllm.platforms as plat

    saved_mod = sys.modules.get("vllm.platforms.rocm")
    saved_attr = plat.__dict__.get("rocm")
    fake = fake_rocm_module(arch)
    sys.modules["vllm.platforms.rocm"] = fake
    plat.rocm = fake
    try:
        yield fake
    finally:
        if saved_mod is None:
            sys.modules.pop("vllm.platforms.rocm", None)
        else:
            sys.modules["vllm.platforms.rocm"] = saved_mod
        if saved_attr is None:
            plat.__dict__.pop("rocm", None)
        else:
            plat.rocm = saved_attr


@contextlib.contextmanager
def patched(obj, **attrs):
    missing = object()
    saved = {k: getattr(obj, k, missing) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is missing:
                delattr(obj, k)
            else:
                setattr(obj, k, v)


@contextlib.contextmanager
def env(**values):
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- the W4A16 math (fp32), skinny shuffled layout --------------------------------------------

def pack_skinny(q):
    """q [E, N, K] in 0..15 -> skinny shuffled [E, N, K // 8] int32."""
    import torch

    E, N, K = q.shape
    g = q.to(torch.int64).reshape(E, N, K // 8, 8)[..., list(SHUFFLE)]
    w = (g << (torch.arange(8) * 4)).sum(-1) & 0xFFFFFFFF
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def pack_gptq(q):
    """q [E, N, K] in 0..15 -> GPTQ [E, K // 8, N] int32 (nibble j = k offset j)."""
    import torch

    E, N, K = q.shape
    g = q.to(torch.int64).transpose(1, 2).reshape(E, K // 8, 8, N).permute(0, 1, 3, 2)
    w = (g << (torch.arange(8) * 4)).sum(-1) & 0xFFFFFFFF
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def unpack_skinny(w):
    import torch

    E, N, KW = w.shape
    nib = (w.to(torch.int64).unsqueeze(-1) >> (torch.arange(8) * 4)) & 0xF
    out = torch.empty_like(nib)
    out[..., list(SHUFFLE)] = nib
    return out.reshape(E, N, KW * 8)


def dequant_skinny(w, scales):
    """fp32 [E, N, K] = (q - 8) * s."""
    import torch

    q = unpack_skinny(w).to(torch.float32)
    g = q.shape[-1] // scales.shape[-1]
    return (q - 8.0) * scales.to(torch.float32).repeat_interleave(g, dim=-1)


def moe_align_block_size_ref(topk_ids, block_size, num_experts, expert_map=None, **_):
    """vLLM's moe_align_block_size in torch: (sorted_token_ids, expert_ids, num_tokens_post_pad)."""
    import torch

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
        sorted_ids[pos: pos + slots.numel()] = slots.to(torch.int32)
        local = e if expert_map is None else int(expert_map[e])
        expert_ids[pos // block_size: (pos + padded) // block_size] = local
        pos += padded
    return sorted_ids, expert_ids, torch.tensor([pos], dtype=torch.int32)


# --- the series' _rocm_C ops, registered for real, run on the CPU ------------------------------

class RocmOps:
    """Registers the series' ops under torch.ops._rocm_C (once per process) and records calls."""

    SCHEMAS = {
        "moe_wvSplitK_int4_gemm": (
            "moe_wvSplitK_int4_gemm(Tensor a, Tensor! c, Tensor b_q, Tensor b_scales, "
            "Tensor? topk_weights, Tensor sorted_token_ids, Tensor expert_ids, "
            "Tensor num_tokens_post_padded, int top_k, int block_size_m, int group_size, "
            "int CuCount) -> ()"),
        "moe_megakernel_gemm2": (
            "moe_megakernel_gemm2(Tensor act, Tensor! out, Tensor w2_q, Tensor w2_scales, "
            "Tensor topk_ids, Tensor topk_weights, int group_size, bool fuse_silu, "
            "int CuCount) -> ()"),
    }
    _lib = None
    calls: list[tuple[str, dict]] = []

    @classmethod
    def install(cls) -> None:
        import torch

        if cls._lib is not None:
            return
        cls._lib = torch.library.Library("_rocm_C", "FRAGMENT")
        for name, schema in cls.SCHEMAS.items():
            cls._lib.define(schema)
            cls._lib.impl(name, getattr(cls, "_" + name), "CPU")

    @classmethod
    def reset(cls) -> None:
        cls.calls = []

    @classmethod
    def names(cls) -> list[str]:
        return [n for n, _ in cls.calls]

    @classmethod
    def _moe_wvSplitK_int4_gemm(cls, a, c, b_q, b_scales, topk_weights, sorted_ids, expert_ids, ntp,
                                top_k, block_size_m, group_size, cu_count):
        import torch

        # the op's own TORCH_CHECKs that a caller can get wrong
        if topk_weights is not None and (topk_weights.dtype != torch.float32
                                         or not topk_weights.is_contiguous()):
            raise RuntimeError("topk_weights must be contiguous float32")
        cls.calls.append(("moe_wvSplitK_int4_gemm", {"rows": a.shape[0], "top_k": top_k,
                                                     "block_size_m": block_size_m}))
        w = dequant_skinny(b_q, b_scales)
        num_valid = c.shape[0]
        a_row_div = 1 if a.shape[0] == num_valid else top_k
        n = int(ntp[0])
        for i in range(n):
            s = int(sorted_ids[i])
            if s >= num_valid:
                continue
            e = int(expert_ids[i // block_size_m])
            if e < 0:
                c[s] = 0
                continue
            y = w[e] @ a[s // a_row_div].to(torch.float32)
            if topk_weights is not None:
                y = y * topk_weights.flatten()[s]
            c[s] = y.to(c.dtype)

    @classmethod
    def _moe_megakernel_gemm2(cls, act, out, w2_q, w2_scales, topk_ids, topk_weights, group_size,
                              fuse_silu, cu_count):
        import torch

        if topk_ids.dtype != torch.int32 or topk_weights.dtype != torch.float32:
            raise RuntimeError("topk_ids int32, topk_weights float32")
        cls.calls.append(("moe_megakernel_gemm2", {"ids": topk_ids.tolist(), "fuse_silu": fuse_silu}))
        w = dequant_skinny(w2_q, w2_scales)
        rows = act.to(torch.float32)
        if fuse_silu:
            d = rows.shape[-1] // 2
            rows = torch.nn.functional.silu(rows[:, :d]) * rows[:, d:]
        acc = torch.zeros(w.shape[1])
        for s, e in enumerate(topk_ids.tolist()):
            if e >= 0:
                acc += topk_weights[s] * (w[e] @ rows[s])
        out[0] = acc.to(out.dtype)


def triton_moe_recorder(calls: list):
    """Stands in for invoke_fused_moe_wna16_triton_kernel (Triton cannot run on this CPU):
    records the config and computes the GEMM in fp32 on the skinny layout."""
    import torch

    def invoke(A, B, C, B_scale, B_zp, topk_weights, sorted_token_ids, expert_ids,
               num_tokens_post_padded, mul_routed_weight, top_k, config, compute_type=None,
               use_int8_w8a16=False, use_int4_w4a16=True, block_shape=None, use_shuffle_w4a16=False,
               **kw):
        calls.append({"config": dict(config), "use_shuffle_w4a16": use_shuffle_w4a16, "N": B.shape[1],
                      "rows": A.shape[0]})
        w = dequant_skinny(B, B_scale)
        c = C.view(-1, C.shape[-1])
        num_valid = c.shape[0]
        bm = config["BLOCK_SIZE_M"]
        for i in range(int(num_tokens_post_padded[0])):
            s = int(sorted_token_ids[i])
            if s >= num_valid:
                continue
            e = int(expert_ids[i // bm])
            if e < 0:
                c[s] = 0
                continue
            y = w[e] @ A[s // top_k].to(torch.float32)
            if mul_routed_weight:
                y = y * topk_weights.flatten()[s].to(torch.float32)
            c[s] = y.to(c.dtype)

    return invoke


class MoEProblem:
    """A small W4A16 MoE layer (skinny shuffled weights) and its fp32 reference."""

    def __init__(self, E=8, hidden=256, inter=128, top_k=2, group_size=32, dtype=None, seed=0):
        import torch

        dtype = dtype or torch.bfloat16
        g = torch.Generator().manual_seed(seed)
        self.E, self.hidden, self.inter, self.top_k, self.gs, self.dtype = E, hidden, inter, top_k, group_size, dtype
        q1 = torch.randint(0, 16, (E, 2 * inter, hidden), generator=g)
        q2 = torch.randint(0, 16, (E, hidden, inter), generator=g)
        self.w1, self.w2 = pack_skinny(q1), pack_skinny(q2)
        self.s1 = (torch.rand(E, 2 * inter, hidden // group_size, generator=g) * 0.02 + 0.005).to(dtype)
        self.s2 = (torch.rand(E, hidden, inter // group_size, generator=g) * 0.02 + 0.005).to(dtype)
        self.g = g

    def inputs(self, tokens: int, weights_dtype=None):
        import torch

        x = torch.randn(tokens, self.hidden, generator=self.g).to(self.dtype)
        ids = torch.stack([torch.randperm(self.E, generator=self.g)[: self.top_k] for _ in range(tokens)])
        tw = torch.softmax(torch.randn(tokens, self.top_k, generator=self.g), -1)
        return x, ids.to(torch.int32), tw.to(weights_dtype or torch.float32)

    def reference(self, x, ids, tw, expert_map=None):
        import torch

        w1, w2 = dequant_skinny(self.w1, self.s1), dequant_skinny(self.w2, self.s2)
        out = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[0]):
            for j in range(self.top_k):
                e = int(ids[t, j])
                if expert_map is not None and int(expert_map[e]) < 0:
                    continue
                le = e if expert_map is None else int(expert_map[e])
                h = w1[le] @ x[t].to(torch.float32)
                a = torch.nn.functional.silu(h[: self.inter]) * h[self.inter:]
                a = a.to(self.dtype).to(torch.float32)  # the chain stores the activation in x's dtype
                out[t] += float(tw[t, j]) * (w2[le] @ a)
        return out


def run_hybrid(hyb, problem: MoEProblem, tokens: int, *, weights_dtype=None, expert_map=None,
               triton_calls: list | None = None, seed_inputs=None):
    """HybridW4A16MoEExperts.apply of the tree, on the problem, with the ROCm stand-in.

    The experts object is the real class's apply/_gemm on a namespace holding what __init__ would
    have set (weights' scales, block shape, CU count); silu_and_mul and moe_sum (vLLM _C ops,
    absent from a python-only install) are done in torch. Returns (output, reference)."""
    import torch

    cls = hyb.HybridW4A16MoEExperts
    x, ids, tw = seed_inputs or problem.inputs(tokens, weights_dtype)
    E_local = problem.E
    stub = types.SimpleNamespace(
        w1_scale=problem.s1, w2_scale=problem.s2, block_shape=[0, problem.gs], _cu_count=4,
    )

    def activation(act, out, inp):
        d = inp.shape[-1] // 2
        out.copy_((torch.nn.functional.silu(inp[:, :d].float()) * inp[:, d:].float()).to(out.dtype))

    stub.activation = activation
    stub.moe_sum = lambda inp, out: out.copy_(inp.float().sum(1).to(out.dtype))
    stub.adjust_N_for_activation = cls.adjust_N_for_activation
    stub.moe_problem_size = types.MethodType(cls.moe_problem_size, stub)
    stub._gemm = types.MethodType(cls._gemm, stub)
    if hasattr(cls, "_megakernel_fits"):
        stub._megakernel_fits = cls._megakernel_fits
    out = torch.empty(tokens, problem.hidden, dtype=problem.dtype)
    N, K = 2 * problem.inter, problem.hidden
    ws13 = torch.empty(tokens * problem.top_k * max(N, K) * 2, dtype=problem.dtype)
    ws2 = torch.empty(tokens * problem.top_k * max(N, K) * 2, dtype=problem.dtype)
    calls = triton_calls if triton_calls is not None else []
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    # a python-only install may have no Triton (vllm.triton_utils then gives a placeholder tl)
    tl = types.SimpleNamespace(bfloat16="bfloat16", float16="float16")
    with patched(hyb, moe_align_block_size=moe_align_block_size_ref,
                 invoke_fused_moe_wna16_triton_kernel=triton_moe_recorder(calls),
                 current_platform=rocm_platform(), tl=tl):
        cls.apply(stub, out, x, problem.w1, problem.w2, tw, ids, MoEActivation.SILU, E_local,
                  expert_map, None, None, ws13, ws2, None, False)
    return out.float(), problem.reference(x, ids, tw, expert_map)


def import_with_stand_ins(module: str, what: str):
    """The tree's ``module`` imported with the ROCm ops stand-in installed; None (after printing why: the
    caller exits 2, the check could not run) when torch, the stand-in or the module cannot be imported."""
    import importlib
    import traceback

    try:
        import torch  # noqa: F401 - a check without torch could not run, like one without the module

        RocmOps.install()
        return importlib.import_module(module)
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: cannot import {what}: {type(e).__name__}: {e}")
        return None
