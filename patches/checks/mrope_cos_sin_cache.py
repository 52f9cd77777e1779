"""Effect check for the `mrope-cos-sin-cache` entry: all layers sharing one MRotaryEmbedding gather
cos/sin from cos_sin_cache once per step, on every forward path a ROCm (or CUDA) build would take,
with outputs bit-identical to the uncached computation.

Run it with the python of a python-only install of the workspace's vLLM (`vpatch verify` does).
Exit 0: the effect is there; 1: it is not (or outputs differ); 2: the check could not run.

How it sees the effect: it builds the rotary embedding the way Qwen3-Omni's thinker does
(get_rope with mrope_section [24, 20, 20], interleaved, head 128, 32 q / 4 kv heads; all layers get
the same instance), runs "decode steps" of 48 layers sharing it and the positions tensor, and counts
the gathers from cos_sin_cache (every `cache[index]`, wherever it happens: Tensor.__getitem__ is
wrapped at the class level, so gathers inside torch custom ops are seen too) and the copies of the
gathered (cos, sin) chunks.  It compares every layer's (q, k) bit for bit with a reference computed
from freshly gathered values with the module's own primitives.

The Triton kernel (triton_mrope) cannot run here: it is replaced by a torch implementation of the
same maths that also records the (cos, sin) it receives, so forward_cuda's and forward_hip's Python
side (gather, cache, the kernel wrapper's .contiguous() copies) is exercised on CPU.
"""
from __future__ import annotations

import contextlib
import sys
import traceback

from _scope import announce, verdict  # noqa: E402 (beside this script)

LAYERS = 48
HEAD, NQ, NKV = 128, 32, 4
ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [24, 20, 20],
        "mrope_interleaved": True}
MAX_POS = 4096

COVERS = [
    "forward_native, forward_cuda and the method the CustomOp dispatch picks on ROCm (forward_hip "
    "when the op is enabled, forward_native otherwise), called on CPU with 2-D (T/H/W) positions",
    "gathers from cos_sin_cache per step of 48 layers (expected: 1) and copies of the gathered chunks",
    "outputs bit-identical to an uncached reference, layer by layer",
    "invalidation: a new positions tensor, the same positions buffer rewritten in place (a persistent "
    "buffer reused by the next step), a query dtype that makes _match_cos_sin_cache_dtype swap the cache",
    "the torch.compile bypass (is_compiling() forced True, and a real fullgraph torch.compile of "
    "forward_native with the eager backend)",
]
CANNOT = [
    "the Triton kernel itself (replaced by a torch implementation of its maths), GPU streams",
    "CUDA/HIP graph capture and replay (the cache is keyed on capture state, which needs a device to "
    "exercise); Inductor-compiled graphs (only Dynamo tracing with the eager backend)",
    "the AITER rotary path of ROCm (use_aiter; not used on gfx11) and any speed effect (TPOT)",
]


class CheckFailed(Exception):
    pass


def main() -> int:
    announce("mrope-cos-sin-cache", COVERS, CANNOT)
    try:
        import torch  # noqa: F401
        from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
    except Exception as e:  # pragma: no cover - environment problem
        print(f"ERROR: cannot import vLLM: {type(e).__name__}: {e}")
        return 2
    failures: list[str] = []
    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        try:
            run_checks(failures)
        except CheckFailed as e:
            failures.append(str(e))
        except Exception as e:
            traceback.print_exc()
            print(f"ERROR: the check crashed: {type(e).__name__}: {e}")
            return 2
    return verdict(failures, "one cos/sin gather per step on every path, outputs bit-identical")


# --- instrumentation ---------------------------------------------------------------------------
class Counter:
    """Counts gathers from the instance's cos_sin_cache and copies of gathered chunks."""

    def __init__(self, emb):
        import torch

        self.emb = emb
        self.gathers = 0
        self.kernel_inputs: list[tuple] = []
        self._orig = torch.Tensor.__getitem__

    def _is_cache(self, t) -> bool:
        import torch

        cache = self.emb.cos_sin_cache
        try:
            return (isinstance(t, torch.Tensor) and t.numel() > 0
                    and t.untyped_storage().data_ptr() == cache.untyped_storage().data_ptr())
        except Exception:
            return False

    @contextlib.contextmanager
    def active(self):
        import torch

        orig = self._orig
        counter = self

        def getitem(t, idx):
            if counter._is_cache(t) and _has_tensor(idx):
                counter.gathers += 1
            return orig(t, idx)

        torch.Tensor.__getitem__ = getitem
        try:
            yield self
        finally:
            torch.Tensor.__getitem__ = orig


def _has_tensor(idx) -> bool:
    import torch

    if isinstance(idx, torch.Tensor):
        return True
    return isinstance(idx, tuple) and any(isinstance(i, torch.Tensor) for i in idx)


class CopyCounter:
    """A dispatch mode counting aten copies of 3-D (3, n, rotary_dim/2) tensors: the gathered chunks."""

    def __init__(self, half: int):
        self.half = half
        self.copies = 0

    def mode(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self
        clone, copy_ = torch.ops.aten.clone.default, torch.ops.aten.copy_.default

        class M(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                src = args[0] if func is clone else args[1] if func is copy_ else None
                if isinstance(src, torch.Tensor) and src.dim() == 3 and src.shape[0] == 3 \
                        and src.shape[-1] == outer.half:
                    outer.copies += 1
                return func(*args, **kwargs)

        return M()


def fake_triton_mrope(record: list):
    """A torch implementation of triton_mrope's maths (NeoX or GPT-J pairs, interleaved or not)."""

    from vllm.model_executor.layers.rotary_embedding import mrope as mrope_mod

    def triton_mrope(q, k, cos, sin, mrope_section, head_size, rotary_dim, mrope_interleaved,
                     is_neox_style):
        record.append((cos, sin, cos.is_contiguous(), sin.is_contiguous()))
        cos = cos.contiguous()  # what the real wrapper does
        sin = sin.contiguous()
        c, s = _select(cos, sin, list(mrope_section), mrope_interleaved, mrope_mod)
        return _rotate(q, c, s, head_size, rotary_dim, is_neox_style), \
            _rotate(k, c, s, head_size, rotary_dim, is_neox_style)

    return triton_mrope


def _select(cos, sin, section, interleaved, mrope_mod):
    import torch

    if interleaved:
        return (mrope_mod.apply_interleaved_rope(cos, section),
                mrope_mod.apply_interleaved_rope(sin, section))
    return (torch.cat([m[i] for i, m in enumerate(cos.split(section, dim=-1))], dim=-1),
            torch.cat([m[i] for i, m in enumerate(sin.split(section, dim=-1))], dim=-1))


def _rotate(x, cos, sin, head_size, rotary_dim, neox):
    import torch

    n = x.shape[0]
    xv = x.reshape(n, -1, head_size)
    rot, rest = xv[..., :rotary_dim].float(), xv[..., rotary_dim:]
    c, s = cos.float()[:, None, :], sin.float()[:, None, :]
    if neox:
        x1, x2 = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2:]
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    return torch.cat((out.to(x.dtype), rest), dim=-1).reshape(x.shape)


class RocmLike:
    """A stand-in ROCm platform built on vLLM's Platform interface (is_rocm/is_cuda_alike come from it)."""

    @staticmethod
    def make():
        from vllm.platforms.interface import Platform, PlatformEnum

        class _Rocm(Platform):
            _enum = PlatformEnum.ROCM
            device_name = "rocm"
            device_type = "cuda"
            dispatch_key = "CUDA"

        return _Rocm()


# --- the checks --------------------------------------------------------------------------------
def run_checks(failures: list[str]) -> None:
    import torch

    import vllm.model_executor.custom_op as custom_op_mod
    from vllm.model_executor.layers.rotary_embedding import get_rope
    from vllm.model_executor.layers.rotary_embedding import mrope as mrope_mod

    dtype = torch.bfloat16
    emb = get_rope(HEAD, max_position=MAX_POS, is_neox_style=True, rope_parameters=dict(ROPE), dtype=dtype)
    emb2 = get_rope(HEAD, max_position=MAX_POS, is_neox_style=True, rope_parameters=dict(ROPE), dtype=dtype)
    print(f"instance: {type(emb).__module__}.{type(emb).__qualname__}; shared by layers: {emb is emb2}")
    if type(emb).__name__ != "MRotaryEmbedding":
        raise CheckFailed(f"get_rope built {type(emb).__name__}, not MRotaryEmbedding, for Qwen3-Omni's rope")
    half = emb.rotary_dim // 2

    record: list = []
    fake = fake_triton_mrope(record)
    mrope_mod_orig = mrope_mod.triton_mrope
    mrope_mod.triton_mrope = fake
    try:
        paths = _paths(emb, custom_op_mod)
        for name, fn, kernel in paths:
            _check_path(name, fn, kernel, emb, mrope_mod, record, half, failures)
        _check_invalidation(emb, mrope_mod, failures)
        _check_compile_bypass(emb, mrope_mod, failures)
    finally:
        mrope_mod.triton_mrope = mrope_mod_orig


def _paths(emb, custom_op_mod):
    """(label, bound method, uses the Triton kernel) for every forward path worth covering."""
    rocm = RocmLike.make()
    picked = []
    saved = custom_op_mod.current_platform
    saved_enforce = getattr(emb, "_enforce_enable", False)
    try:
        custom_op_mod.current_platform = rocm
        for enabled in (True, False):
            emb._enforce_enable = enabled
            try:
                picked.append(emb.dispatch_forward(compile_native=False))
            except TypeError:
                picked.append(emb.dispatch_forward())
    finally:
        custom_op_mod.current_platform = saved
        emb._enforce_enable = saved_enforce
    out = []
    hip = picked[0]
    hip_name = getattr(hip, "__qualname__", repr(hip))
    print(f"ROCm dispatch with the op enabled picks: {hip_name}")
    print(f"ROCm dispatch with the default config picks: {getattr(picked[1], '__qualname__', repr(picked[1]))}")
    out.append(("forward_native", emb.forward_native, False))
    out.append(("forward_cuda", emb.forward_cuda, True))
    out.append((f"ROCm dispatch ({hip_name})", hip, True))
    return out


def _inputs(n: int, seed: int, dtype):
    import torch

    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, MAX_POS - 64, (n,), generator=g)
    # T/H/W positions: text-like (all equal) for some tokens, image-like offsets for others
    pos = torch.stack([base, base + torch.randint(0, 8, (n,), generator=g),
                       base + torch.randint(0, 8, (n,), generator=g)])
    qs = [torch.randn(n, NQ * HEAD, generator=g).to(dtype) for _ in range(LAYERS)]
    ks = [torch.randn(n, NKV * HEAD, generator=g).to(dtype) for _ in range(LAYERS)]
    return pos, qs, ks


def _reference(emb, mrope_mod, positions, q, k, kernel: bool):
    """The uncached maths: a fresh gather, then what the path does with it."""
    cache = emb.cos_sin_cache.to(q.dtype) if emb.cos_sin_cache.dtype != q.dtype else emb.cos_sin_cache
    cos, sin = torch_index(cache, positions).chunk(2, dim=-1)
    if kernel:
        c, s = _select(cos.contiguous(), sin.contiguous(), list(emb.mrope_section), emb.mrope_interleaved,
                       mrope_mod)
        return (_rotate(q, c, s, emb.head_size, emb.rotary_dim, emb.is_neox_style),
                _rotate(k, c, s, emb.head_size, emb.rotary_dim, emb.is_neox_style))
    import torch

    c, s = _select(cos, sin, list(emb.mrope_section), emb.mrope_interleaved, mrope_mod)
    n = positions.shape[-1]
    outs = []
    for x in (q, k):
        shape = x.shape
        xv = x.view(n, -1, emb.head_size)
        rot = emb.apply_rotary_emb.forward_native(xv[..., : emb.rotary_dim], c, s)
        outs.append(torch.cat((rot, xv[..., emb.rotary_dim:]), dim=-1).reshape(shape))
    return tuple(outs)


def torch_index(t, idx):
    """t[idx] for an index tensor, without going through Tensor.__getitem__ (not counted)."""
    return t.index_select(0, idx.reshape(-1)).reshape(*idx.shape, *t.shape[1:])


def _step(fn, positions, qs, ks):
    outs = []
    for q, k in zip(qs, ks, strict=True):
        qo, ko = fn(positions, q.clone(), k.clone())
        outs.append((qo, ko))
    return outs


def _check_path(name, fn, kernel, emb, mrope_mod, record, half, failures):
    import torch

    counter = Counter(emb)
    copies = CopyCounter(half)
    for step, n in enumerate((17, 3, 3)):  # a short prefill, then two decode steps
        positions, qs, ks = _inputs(n, seed=100 + step, dtype=emb.cos_sin_cache.dtype)
        refs = [_reference(emb, mrope_mod, positions, q, k, kernel) for q, k in zip(qs, ks, strict=True)]
        record.clear()
        counter.gathers, copies.copies = 0, 0
        try:
            with counter.active(), copies.mode():
                outs = _step(fn, positions, qs, ks)
        except Exception as e:
            note = _static_verdict(fn)
            failures.append(f"{name}: cannot run on CPU ({type(e).__name__}: {e}); static analysis: {note}")
            print(f"  {name}: could not run on CPU: {type(e).__name__}: {e}; static analysis: {note}")
            return
        same = all(torch.equal(o[0], r[0]) and torch.equal(o[1], r[1]) for o, r in zip(outs, refs, strict=True))
        kinfo = ""
        if kernel:
            nc = sum(1 for r in record if not (r[2] and r[3]))
            kinfo = f", kernel calls {len(record)} ({nc} with non-contiguous cos/sin)"
        print(f"  {name}: step {step} ({n} tokens x {LAYERS} layers): {counter.gathers} gather(s), "
              f"{copies.copies} cos/sin copies{kinfo}, bit-identical: {same}")
        if counter.gathers != 1:
            where = _static_verdict(fn)
            failures.append(f"{name}: {counter.gathers} cos_sin_cache gathers in one step of {LAYERS} layers "
                            f"sharing the instance (expected 1): the cache is bypassed on this path ({where})")
            return
        if not same:
            failures.append(f"{name}: outputs differ from the uncached reference (step {step})")
            return


def _static_verdict(fn, depth: int = 0) -> str:
    """Which cos/sin lookup the method's code uses, read from its code object (no execution)."""
    func = getattr(fn, "__func__", fn)
    code = getattr(func, "__code__", None)
    qual = getattr(fn, "__qualname__", "?")
    if code is None:
        return f"{qual}: no Python code object"
    names = set(code.co_names)
    if "_get_cos_sin" in names:
        return f"{qual} calls the cached lookup _get_cos_sin"
    if {"ops", "vllm"} <= names:
        ops = sorted(n for n in names if n not in ("ops", "vllm", "torch", "self"))
        return (f"{qual} calls a torch custom op (torch.ops.vllm.*; names used: {', '.join(ops[:8])}) "
                "that gathers cos/sin by itself, not through _get_cos_sin")
    own = func.__name__
    for target in ("forward_cuda", "forward_native"):
        if target in names and target != own and depth < 2 and hasattr(fn, "__self__"):
            inner = getattr(fn.__self__, target)
            return f"{qual} delegates to {target}; " + _static_verdict(inner, depth + 1)
    return f"{qual} does not call _get_cos_sin (it gathers cos_sin_cache itself)"


def _check_invalidation(emb, mrope_mod, failures):
    import torch

    fn = emb.forward_native
    counter = Counter(emb)
    positions, qs, ks = _inputs(5, seed=7, dtype=emb.cos_sin_cache.dtype)
    qs, ks = qs[:4], ks[:4]
    with counter.active():
        _step(fn, positions, qs, ks)
        # (a) the same tensor again: a hit
        g0 = counter.gathers
        _step(fn, positions, qs, ks)
        hit = counter.gathers - g0
        # (b) a new positions tensor (another data pointer): must miss and give the new values
        new_pos = positions + 11
        g0 = counter.gathers
        out = _step(fn, new_pos, qs, ks)
        miss_new = counter.gathers - g0
        ok_new = all(torch.equal(o[0], _reference(emb, mrope_mod, new_pos, q, k, False)[0])
                     for o, q, k in zip(out, qs, ks, strict=True))
        # (c) the same buffer rewritten in place (a persistent positions buffer reused by the next step)
        buf = positions.clone()
        _step(fn, buf, qs, ks)
        buf.add_(5)
        g0 = counter.gathers
        out = _step(fn, buf, qs, ks)
        miss_inplace = counter.gathers - g0
        ok_inplace = all(torch.equal(o[0], _reference(emb, mrope_mod, buf, q, k, False)[0])
                         for o, q, k in zip(out, qs, ks, strict=True))
        # (d) a query dtype other than the cache's: _match_cos_sin_cache_dtype swaps the cache
        q32 = [q.float() for q in qs]
        k32 = [k.float() for k in ks]
        out = _step(fn, buf, q32, k32)
        ok_dtype = all(torch.equal(o[0], _reference(emb, mrope_mod, buf, q, k, False)[0])
                       for o, q, k in zip(out, q32, k32, strict=True))
        # back to the model dtype for what follows
        _step(fn, buf, qs, ks)
    print(f"  invalidation: same tensor again -> {hit} gather(s); new tensor -> {miss_new}, values right: "
          f"{ok_new}; rewritten in place -> {miss_inplace}, values right: {ok_inplace}; "
          f"float32 query: values right: {ok_dtype}")
    if hit != 0:
        # no caching at all: the per-step count above already fails; invalidation is moot
        print("  invalidation: not applicable (nothing is cached)")
        return
    if miss_new != 1 or not ok_new:
        failures.append("a new positions tensor did not invalidate the cached cos/sin")
    if miss_inplace != 1 or not ok_inplace:
        failures.append("a positions buffer rewritten in place returned stale cos/sin")
    if not ok_dtype:
        failures.append("a float32 query after a bfloat16 one returned cos/sin of the wrong dtype/values")


def _check_compile_bypass(emb, mrope_mod, failures):
    import torch

    positions, qs, ks = _inputs(4, seed=9, dtype=emb.cos_sin_cache.dtype)
    qs, ks = qs[:3], ks[:3]
    counter = Counter(emb)
    orig = torch.compiler.is_compiling
    torch.compiler.is_compiling = lambda: True
    try:
        with counter.active():
            out = _step(emb.forward_native, positions, qs, ks)
    finally:
        torch.compiler.is_compiling = orig
    ok = all(torch.equal(o[0], _reference(emb, mrope_mod, positions, q, k, False)[0])
             for o, q, k in zip(out, qs, ks, strict=True))
    print(f"  while tracing (is_compiling forced True): {counter.gathers} gathers for {len(qs)} layers "
          f"(expected {len(qs)}: cache bypassed), values right: {ok}")
    if counter.gathers != len(qs) or not ok:
        failures.append("the cache is not bypassed while torch.compile traces")
    # a real trace: fullgraph fails on a graph break (data_ptr, weakref ... in traced code)
    try:
        import torch._dynamo

        torch._dynamo.reset()
        compiled = torch.compile(emb.forward_native, backend="eager", fullgraph=True)
        q, k = qs[0].clone(), ks[0].clone()
        qo, ko = compiled(positions, q, k)
        ref = _reference(emb, mrope_mod, positions, qs[0], ks[0], False)
        same = torch.equal(qo, ref[0]) and torch.equal(ko, ref[1])
        print(f"  torch.compile(forward_native, fullgraph=True, backend='eager'): traced, bit-identical: {same}")
        if not same:
            failures.append("the torch.compile'd forward_native differs from the uncached reference")
    except Exception as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        print(f"  torch.compile(forward_native, fullgraph=True) failed: {type(e).__name__}: {msg}")
        failures.append(f"forward_native does not trace under torch.compile(fullgraph=True): {msg}")


if __name__ == "__main__":
    sys.exit(main())
