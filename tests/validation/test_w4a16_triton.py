"""The series' shuffled-W4A16 Triton MoE kernel, run on the CPU with TRITON_INTERPRET=1.

The kernel is the exact code of the patched tree's fused_moe.py (base v0.28.0 +
moe-int4-wvsplitk + fused-moe-hybrid-w4a16), cut out with ast by
w4a16_ref.load_triton_kernels: fused_moe.py imports all of vLLM, the kernels need only triton.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from vpatch.validation import w4a16_ref as R  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _fix_interpreter_bf16_dot():
    """Triton 3.9's interpreter multiplies bf16 dot operands as raw uint16 (numpy has no bf16).

    Upcast bf16 operands to fp32 before its matmul; the compiled kernel is not affected.
    """
    import triton.language as tl
    from triton.runtime import interpreter as interp

    B = interp.InterpreterBuilder
    if getattr(B.create_dot, "_vpatch_bf16", False):
        return
    orig = B.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return orig(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot._vpatch_bf16 = True
    B.create_dot = create_dot


@pytest.fixture(scope="module")
def kern(tmp_path_factory):
    try:
        tree = R.build_kernel_tree(REPO, tmp_path_factory.mktemp("kernel-tree"))
    except RuntimeError as e:
        pytest.skip(str(e))
    # @triton.jit (triton's own tl.* helpers included) picks the interpreter when it decorates,
    # so TRITON_INTERPRET must be on before triton is first imported in this process.
    preimported = "triton" in sys.modules
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        triton = pytest.importorskip("triton")
        if preimported and type(triton.language.interleave).__name__ != "InterpretedFunction":
            pytest.skip("triton was imported before TRITON_INTERPRET=1 was set in this process; "
                        "test_module_runs_in_a_fresh_process_when_triton_was_imported_first runs these there")
        _fix_interpreter_bf16_dot()
        yield R.load_triton_kernels(tree / R.KERNEL_PATHS[0])
    finally:  # leave the variable as it was for the rest of the session
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def test_unshuffle_helper(kern):
    import triton
    import triton.language as tl

    global _unshuffle
    _unshuffle = kern.unshuffle_w4a16  # the jit resolves helpers through module globals

    @triton.jit
    def probe(w_ptr, out_ptr, BN: tl.constexpr, BK: tl.constexpr):
        n = tl.arange(0, BN)
        kw = tl.arange(0, BK // 8)
        w = tl.load(w_ptr + n[:, None] * (BK // 8) + kw[None, :])
        q = _unshuffle(w, BK)  # [BK, BN]
        k = tl.arange(0, BK)
        tl.store(out_ptr + k[:, None] * BN + n[None, :], q)

    q = torch.randint(0, 16, (1, 4, 32))
    w = R.pack_skinny_shuffled(q)[0].contiguous()
    out = torch.empty(32, 4, dtype=torch.int32)
    probe[(1,)](w, out, BN=4, BK=32)
    assert torch.equal(out.to(torch.int64), q[0].T)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 128])
def test_shuffled_kernel_matches_reference(kern, dtype, group_size):
    E, N, K, T, top_k = 5, 48, 256, 3, 2
    g = torch.Generator().manual_seed(group_size)
    q, s = R.random_w4a16(E, N, K, group_size, dtype, seed=group_size)
    b = R.pack_skinny_shuffled(q)
    x = torch.randn(T, K, generator=g).to(dtype)
    ids = torch.stack([torch.randperm(E, generator=g)[:top_k] for _ in range(T)]).to(torch.int32)
    cfg = R.triton_moe_config(N, group_size, block_m=16)
    sid, eid, ntp = R.moe_align_block_size_ref(ids, cfg["BLOCK_SIZE_M"], E)
    cfg.pop("num_warps"), cfg.pop("num_stages")

    c = torch.zeros(T, top_k, N, dtype=dtype)
    R.run_triton_moe_gemm(kern, x, b, s, c, sid, eid, ntp, top_k, group_size, cfg)
    ref = R.moe_gemm_ref(x, R.dequant(q, s, group_size), ids)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(c.view(-1, N).float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


def test_shuffled_kernel_gemm2_routed_weight(kern):
    """GEMM2 shape class: top_k=1 view, per-slot rows, topk weights multiplied in."""
    E, N, K, T, top_k, G = 4, 128, 64, 2, 2, 32
    q, s = R.random_w4a16(E, N, K, G, torch.float16, seed=7)
    ids = torch.tensor([[0, 3], [2, 3]], dtype=torch.int32)
    tw = torch.rand(T, top_k)
    act = torch.randn(T * top_k, K).to(torch.float16)
    cfg = R.triton_moe_config(N, G, block_m=16)
    cfg.pop("num_warps"), cfg.pop("num_stages")
    sid, eid, ntp = R.moe_align_block_size_ref(ids, 16, E)
    c = torch.zeros(T, top_k, N, dtype=torch.float16)
    R.run_triton_moe_gemm(kern, act, R.pack_skinny_shuffled(q), s, c, sid, eid, ntp, 1, G, cfg, topk_weights=tw)
    ref = R.moe_gemm_ref(act, R.dequant(q, s, G), ids, tw, a_per_slot=True)
    torch.testing.assert_close(c.view(-1, N).float(), ref, atol=2e-3 * ref.abs().max().item(), rtol=2e-3)


def test_upstream_layout_still_works(kern):
    """use_shuffle_w4a16 off: the unshuffled [E, N, K/2] uint8 path is unchanged."""
    E, N, K, T, top_k, G = 3, 32, 64, 2, 2, 32
    q, s = R.random_w4a16(E, N, K, G, torch.float16, seed=11)
    b = (q[..., 0::2] | (q[..., 1::2] << 4)).to(torch.uint8)
    x = torch.randn(T, K).to(torch.float16)
    ids = torch.tensor([[0, 1], [2, 0]], dtype=torch.int32)
    cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, GROUP_SIZE_M=1, SPLIT_K=1)
    sid, eid, ntp = R.moe_align_block_size_ref(ids, 16, E)
    c = torch.zeros(T, top_k, N, dtype=torch.float16)
    R.run_triton_moe_gemm(kern, x, b, s, c, sid, eid, ntp, top_k, G, cfg, shuffle=False)
    ref = R.moe_gemm_ref(x, R.dequant(q, s, G), ids)
    torch.testing.assert_close(c.view(-1, N).float(), ref, atol=2e-3 * ref.abs().max().item(), rtol=2e-3)


def test_module_runs_in_a_fresh_process_when_triton_was_imported_first():
    """In a full test run another module imports triton first, and the interpreter can no longer be
    switched on in this process: then run this whole module again in a fresh one, where it can."""
    if os.environ.get("VPATCH_TRITON_FRESH") == "1" or "triton" not in sys.modules:
        pytest.skip("this process can run the interpreter tests itself")
    import subprocess

    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                       capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "VPATCH_TRITON_FRESH": "1", "TRITON_INTERPRET": "1"},
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last, last
    assert "skipped" not in last or last.count("skipped") == 1 and " 1 skipped" in last, last
