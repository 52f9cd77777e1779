"""CPU checks of the W4A16 packing, the dequant math and the HIP kernels' launch arithmetic.

The HIP kernels cannot run here; their host-side index arithmetic (grid, tiles, expert
blocks, the m-stripes each wave / workgroup owns) is mirrored in
vpatch.validation.w4a16_ref and walked like the device would, against the torch reference.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from vpatch.validation import w4a16_ref as R

REPO = Path(__file__).resolve().parents[2]


def test_gptq_skinny_round_trip():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (3, 64, 40), generator=g)  # [E, K, N]
    w = R.pack_gptq(q)
    assert w.shape == (3, 8, 40) and w.dtype == torch.int32
    assert torch.equal(R.unpack_gptq(w), q)
    s = R.gptq_to_skinny_shuffled(w)
    assert s.shape == (3, 40, 8)
    assert torch.equal(R.unpack_skinny_shuffled(s), q.transpose(1, 2))
    assert torch.equal(R.skinny_shuffled_to_gptq(s), w)


def test_shuffle_order_is_exllama():
    # k = 0..7 with value k + 1: nibbles 0..3 hold k0,k2,k4,k6, nibbles 4..7 k1,k3,k5,k7
    q = torch.arange(1, 9).view(1, 1, 8)
    word = int(R.pack_skinny_shuffled(q)[0, 0, 0]) & 0xFFFFFFFF
    assert [(word >> (4 * j)) & 0xF for j in range(8)] == [1, 3, 5, 7, 2, 4, 6, 8]
    # one mask 0x000F000F per 4-bit shift gives the (k, k+1) pairs in order
    pairs = [((word >> (4 * i)) & 0xF, (word >> (16 + 4 * i)) & 0xF) for i in range(4)]
    assert pairs == [(1, 2), (3, 4), (5, 6), (7, 8)]


def test_patched_repack_matches_reference():
    """The load-time converter in the hybrid entry equals the reference."""
    patch = (REPO / "patches" / "fused-moe-hybrid-w4a16.patch").read_text()
    # the converter is a new file: its added lines are its whole source
    start = patch.index("+++ b/vllm/model_executor/layers/fused_moe/experts/hybrid_w4a16_moe.py")
    hunk = patch[start:].split("\ndiff --git", 1)[0]
    src = "\n".join(ln[1:] for ln in hunk.splitlines()[2:] if ln.startswith("+"))
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "gptq_to_skinny_shuffled")
    ns = {"torch": torch}
    exec(ast.get_source_segment(src, fn), ns)
    q = torch.randint(0, 16, (2, 256, 48))
    w = R.pack_gptq(q)
    assert torch.equal(ns["gptq_to_skinny_shuffled"](w), R.gptq_to_skinny_shuffled(w))


@pytest.mark.parametrize("group_size", [32, 128])
def test_dequant_symmetric(group_size):
    q, s = R.random_w4a16(2, 4, 256, group_size, torch.float16)
    w = R.dequant_skinny(R.pack_skinny_shuffled(q), s, group_size)
    k = 200
    assert torch.allclose(w[1, 3, k], (q[1, 3, k] - 8).float() * s[1, 3, k // group_size].float())


def _moe_case(T, top_k, E, N, K, G, dtype, block_m, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, s = R.random_w4a16(E, N, K, G, dtype, seed=seed)
    b = R.pack_skinny_shuffled(q)
    x = torch.randn(T, K, generator=g).to(dtype)
    ids = torch.stack([torch.randperm(E, generator=g)[:top_k] for _ in range(T)]).to(torch.int32)
    tw = torch.rand(T, top_k, generator=g)
    sid, eid, ntp = R.moe_align_block_size_ref(ids, block_m, E)
    return q, s, b, x, ids, tw, sid, eid, ntp


@pytest.mark.parametrize("T,top_k,block_m,cu", [(1, 8, 16, 3), (3, 4, 16, 2), (5, 2, 4, 5), (2, 3, 1, 4)])
def test_wvsplitk_launch_mirror_gemm1(T, top_k, block_m, cu):
    E, N, K, G = top_k + 3, 24, 64, 32
    q, s, b, x, ids, tw, sid, eid, ntp = _moe_case(T, top_k, E, N, K, G, torch.float16, block_m)
    num_valid = T * top_k
    plan = R.wvsplitk_plan(x.shape[0], K, N, num_valid, top_k, block_m, eid.numel(), cu)
    assert plan.a_row_div == top_k and plan.n_rows == min(T, block_m)
    assert plan.grid == (cu, min(eid.numel(), num_valid)) and plan.block == (32, 4)
    assert plan.lds_elems == 8192  # 16 KB for decode shapes
    c, writes = R.emulate_wvsplitk(plan, x, b, s, G, sid, eid, int(ntp), block_m, num_valid)
    assert torch.equal(writes, torch.ones_like(writes)), "every output written exactly once"
    ref = R.moe_gemm_ref(x, R.dequant(q, s, G), ids)
    torch.testing.assert_close(c, ref, atol=1e-3, rtol=1e-3)


def test_wvsplitk_launch_mirror_gemm2_weighted():
    T, top_k, E, N, K, G, block_m = 2, 4, 5, 16, 96, 32, 16
    q, s, b, x, ids, tw, sid, eid, ntp = _moe_case(T, top_k, E, N, K, G, torch.bfloat16, block_m, seed=3)
    act = torch.randn(T * top_k, K).to(torch.bfloat16)
    plan = R.wvsplitk_plan(act.shape[0], K, N, T * top_k, top_k, block_m, eid.numel(), 2)
    assert plan.a_row_div == 1
    c, writes = R.emulate_wvsplitk(plan, act, b, s, G, sid, eid, int(ntp), block_m, T * top_k, topk_weights=tw)
    assert torch.equal(writes, torch.ones_like(writes))
    ref = R.moe_gemm_ref(act, R.dequant(q, s, G), ids, tw, a_per_slot=True)
    torch.testing.assert_close(c, ref, atol=1e-3, rtol=1e-3)


def test_wvsplitk_expert_not_on_rank_writes_zeros():
    T, top_k, E, N, K, G, block_m = 1, 2, 4, 8, 32, 32, 16
    q, s, b, x, ids, tw, sid, eid, ntp = _moe_case(T, top_k, E, N, K, G, torch.float16, block_m)
    eid = eid.clone()
    eid[0] = -1
    plan = R.wvsplitk_plan(1, K, N, top_k, top_k, block_m, eid.numel(), 1)
    c, writes = R.emulate_wvsplitk(plan, x, b, s, G, sid, eid, int(ntp), block_m, top_k)
    assert torch.equal(writes, torch.ones_like(writes))
    assert torch.all(c[int(sid[0])] == 0)


def test_wvsplitk_plan_limits():
    with pytest.raises(ValueError):
        R.wvsplitk_plan(6, 2048, 1536, 48, 8, 16, 100, 20)  # 6 rows per block: not a decode shape
    big = R.wvsplitk_plan(5, 2048, 1536, 40, 8, 16, 100, 20)
    assert big.lds_elems == R.LDS_LARGE  # 5 x 2048 > 16 KB slab
    with pytest.raises(ValueError):
        R.wvsplitk_plan(1, 2048, 1535, 8, 8, 16, 100, 20)  # odd N vs YTILE=2


@pytest.mark.parametrize("fuse_silu", [False, True])
@pytest.mark.parametrize("M,cu", [(64, 1), (96, 2), (2048, 20)])
def test_megakernel_stripes(M, cu, fuse_silu):
    plan = R.megakernel_plan(M, 8, cu)
    owners = sorted(R.megakernel_owner(plan, b, row) for b in range(plan.grid) for row in range(plan.per_block_m))
    owned = [m for m in owners if m < M]
    assert owned == list(range(M)), "disjoint m-stripes covering every row once"
    if M > 96:
        return
    E, K, G, top_k = 10, 64, 32, 8
    q, s = R.random_w4a16(E, M, K, G, torch.float16, seed=M)
    ids = torch.randperm(E)[:top_k].to(torch.int32).view(1, -1)
    tw = torch.rand(1, top_k)
    act = torch.randn(top_k, 2 * K if fuse_silu else K)
    out, writes = R.emulate_megakernel(plan, act, R.pack_skinny_shuffled(q), s, G, ids, tw, fuse_silu)
    assert torch.equal(writes, torch.ones_like(writes))
    rows = R.silu_and_mul(act) if fuse_silu else act
    ref = R.moe_gemm_ref(rows, R.dequant(q, s, G), ids, tw, a_per_slot=True).sum(0)
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)


def test_megakernel_plan_grows_past_lds():
    with pytest.raises(ValueError):
        R.megakernel_plan(2048 * 8, 8, 1)


def test_megakernel_skips_experts_on_another_rank():
    """expert_map's -1 ids: the slot adds nothing (the binding maps global ids before the launch)."""
    M, K, G, E, top_k = 64, 64, 32, 6, 4
    plan = R.megakernel_plan(M, top_k, 2)
    q, s = R.random_w4a16(E, M, K, G, torch.float16, seed=3)
    ids = torch.tensor([[2, -1, 5, -1]], dtype=torch.int32)
    tw = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    act = torch.randn(top_k, K)
    out, writes = R.emulate_megakernel(plan, act, R.pack_skinny_shuffled(q), s, G, ids, tw)
    assert torch.equal(writes, torch.ones_like(writes))
    keep = torch.tensor([[2, 5]], dtype=torch.int32)
    ref = R.moe_gemm_ref(act[[0, 2]], R.dequant(q, s, G), keep, tw[:, [0, 2]], a_per_slot=True).sum(0)
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("bits", [0x7F800001, 0xFFFFFFFF, 0x7FC00000, 0xFF800123, 0x7F80FFFF])
def test_bf16_rounding_keeps_nan(bits):
    """The kernels' bf16 store: a NaN stays a NaN (plain RTNE made +-Inf or +0 of these)."""
    out = R.bf16_from_f32_bits(bits)
    assert (out & 0x7F80) == 0x7F80 and (out & 0x007F) != 0, hex(out)
    assert (out >> 15) == (bits >> 31)  # sign kept


@pytest.mark.parametrize("x", [1.0, -2.5, 3.1415927, 1e-20, -7.0e30, 65504.0, 0.0])
def test_bf16_rounding_matches_torch_for_numbers(x):
    import struct

    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    want = torch.tensor([x], dtype=torch.float32).to(torch.bfloat16).view(torch.int16).item() & 0xFFFF
    assert R.bf16_from_f32_bits(bits) == want
