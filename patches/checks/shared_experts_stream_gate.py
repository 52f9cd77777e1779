"""Effect check for the `shared-experts-stream-gate` entry: on ROCm, the fused-MoE runner's shared
experts run on the auxiliary stream, overlapped with the router/experts, when the aux stream exists
and the batch is at most VLLM_SHARED_EXPERTS_STREAM_TOKEN_THRESHOLD tokens -- and not otherwise.

Run with the python of the workspace's python-only install (`vpatch verify` does).
Exit 0: pass; 1: fail; 2: the check could not run.

How: the workspace's real `SharedExperts` is built with a ROCm platform in place (a Platform of
vLLM's own interface with the ROCm enum, so is_cuda() is False and is_cuda_alike()/is_rocm() True,
put where shared_experts.py looks it up) and a stand-in aux stream, for a single-GPU deployment
(tp = dp = 1, no EPLB) like Strix Halo's.  `_determine_shared_experts_order` is asked for batches
under, at and over the threshold, with and without the stream, and on CUDA and CPU platforms too.
Where the v0.28.0 API is present, `forward` with the overlapped order is run through with the
stream calls stubbed, to see the shared-experts MLP actually run on the aux stream.
"""
from __future__ import annotations

import contextlib
import inspect
import sys
import traceback
from types import SimpleNamespace

from _scope import announce, verdict  # noqa: E402 (beside this script)

COVERS = [
    "SharedExperts._determine_shared_experts_order (the real code) under ROCm, CUDA and CPU platforms, "
    "with and without the aux stream, batches under / at / over the token threshold",
    "single-GPU ROCm (tp = dp = 1, no EPLB); a DP-only deployment is reported for information",
    "SharedExperts.forward with the overlapped order: the MLP runs inside the aux-stream context "
    "(stream calls stubbed) and gives the same output",
]
CANNOT = [
    "real HIP streams: that the overlap is correct and faster on a GPU (no GPU here; the stream is a "
    "stand-in and torch.cuda.stream is stubbed)",
    "a real ROCm platform object: vllm.platforms.rocm cannot be imported with CPU torch, so a Platform "
    "subclass with the ROCm enum stands in",
    "the MK-internal overlap (DP/EP all2all kernels) and DBO micro-batching",
]


class FakeStream:
    def __init__(self):
        self.entered = 0
        self.waits = 0

    def wait_stream(self, other):
        self.waits += 1

    def wait_event(self, event):
        self.waits += 1

    def record_event(self, event=None):
        return event


class FakeEvent:
    def __init__(self, *a, **k):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass


def platform(kind: str):
    from vllm.platforms.interface import Platform, PlatformEnum

    enum = {"rocm": PlatformEnum.ROCM, "cuda": PlatformEnum.CUDA, "cpu": PlatformEnum.CPU}[kind]

    class _P(Platform):
        _enum = enum
        device_name = kind
        device_type = "cuda" if kind != "cpu" else "cpu"
        dispatch_key = "CUDA" if kind != "cpu" else "CPU"

    return _P()


def moe_config(dp: int = 1, tp: int = 1):
    par = SimpleNamespace(enable_eplb=False, all2all_backend="allgather_reducescatter",
                          use_fi_nvl_two_sided_kernels=False, dp_size=dp, tp_size=tp, ep_size=1,
                          use_ep=False, pcp_size=1)
    return SimpleNamespace(moe_parallel_config=par)


@contextlib.contextmanager
def patched(mod, **attrs):
    saved = {k: getattr(mod, k) for k in attrs if hasattr(mod, k)}
    for k, v in attrs.items():
        setattr(mod, k, v)
    try:
        yield
    finally:
        for k in attrs:
            if k in saved:
                setattr(mod, k, saved[k])
            else:
                delattr(mod, k)


def build(se_mod, kind: str, with_stream: bool, layer, dp: int = 1, tp: int = 1):
    import torch

    stream = FakeStream() if with_stream else None
    kwargs = {"layer": layer, "moe_config": moe_config(dp, tp), "enable_dbo": False,
              "mk_can_overlap_shared_experts": lambda: False, "is_multistream_safe": lambda: True}
    params = inspect.signature(se_mod.SharedExperts.__init__).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    with patched(se_mod, current_platform=platform(kind), aux_stream=lambda: stream), \
            patched(torch.cuda, Event=FakeEvent):
        se = se_mod.SharedExperts(**kwargs)
    se._stream = stream  # whatever the constructor decided (e.g. VLLM_DISABLE_SHARED_EXPERTS_STREAM)
    return se, stream


def main() -> int:
    announce("shared-experts-stream-gate", COVERS, CANNOT)
    try:
        import torch

        import vllm.envs as envs
        import vllm.model_executor.layers.fused_moe.runner.shared_experts as se_mod
    except Exception as e:
        print(f"ERROR: cannot import vLLM's shared_experts runner: {type(e).__name__}: {e}")
        return 2
    failures: list[str] = []
    try:
        Order = se_mod.SharedExpertsOrder
        thr = int(envs.VLLM_SHARED_EXPERTS_STREAM_TOKEN_THRESHOLD)
        layer = torch.nn.Linear(16, 16)
        cases = [
            # platform, stream, tokens, expected
            ("rocm", True, 1, Order.MULTI_STREAM_OVERLAPPED),
            ("rocm", True, thr, Order.MULTI_STREAM_OVERLAPPED),
            ("rocm", True, thr + 1, Order.NO_OVERLAP),
            ("rocm", False, 1, Order.NO_OVERLAP),
            ("cuda", True, 1, Order.MULTI_STREAM_OVERLAPPED),
            ("cuda", True, thr + 1, Order.NO_OVERLAP),
            ("cpu", True, 1, Order.NO_OVERLAP),
        ]
        print(f"token threshold (VLLM_SHARED_EXPERTS_STREAM_TOKEN_THRESHOLD): {thr}")
        for kind, with_stream, tokens, expected in cases:
            se, _ = build(se_mod, kind, with_stream, layer)
            with patched(se_mod, current_platform=platform(kind)):
                got = se._determine_shared_experts_order(torch.empty(tokens, 16))
            ok = got == expected
            print(f"  {kind:4s} aux stream {'yes' if with_stream else 'no ':3s} {tokens:4d} tokens -> "
                  f"{got.name} (expected {expected.name}) {'ok' if ok else 'WRONG'}")
            if not ok:
                failures.append(f"{kind}, aux stream {'present' if with_stream else 'absent'}, {tokens} tokens: "
                                f"order {got.name}, expected {expected.name}")
        # information: a DP-only ROCm deployment
        se, _ = build(se_mod, "rocm", True, layer, dp=2, tp=1)
        with patched(se_mod, current_platform=platform("rocm")):
            got = se._determine_shared_experts_order(torch.empty(1, 16))
        print(f"  (info) rocm, DP-only (dp=2, tp=1), 1 token -> {got.name}")
        _run_through(se_mod, layer, Order, failures)
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: the check crashed: {type(e).__name__}: {e}")
        return 2
    return verdict(failures, "ROCm overlaps the shared experts on the aux stream under the threshold, not otherwise")


def _run_through(se_mod, layer, Order, failures) -> None:
    """Run SharedExperts.forward in the overlapped order on 'ROCm' (v0.28.0-style API only)."""
    import torch

    if not hasattr(se_mod.SharedExperts, "_run_in_aux_stream"):
        print("  run-through: this vLLM's SharedExperts has no _run_in_aux_stream (another API): not covered")
        return
    se, stream = build(se_mod, "rocm", True, layer)

    @contextlib.contextmanager
    def fake_stream_ctx(s):
        s.entered += 1
        yield

    x = torch.randn(2, 16)
    x.record_stream = lambda s: None  # record_stream needs a device stream
    with patched(se_mod, current_platform=platform("rocm"), current_stream=lambda: FakeStream()), \
            patched(torch.cuda, stream=fake_stream_ctx):
        if hasattr(se, "maybe_sync_shared_experts_stream"):
            se.maybe_sync_shared_experts_stream(x)
        se.forward(x, Order.MULTI_STREAM_OVERLAPPED)
        if se._output[0] is None:
            got = se._determine_shared_experts_order(x)
            print(f"  run-through on rocm: forward(order=MULTI_STREAM_OVERLAPPED) did not run the shared "
                  f"experts (it determines {got.name})")
            failures.append("SharedExperts.forward does not run the shared experts on the aux stream on ROCm")
            return
        out = se.output
    same = torch.equal(out, layer(x))
    print(f"  run-through on rocm: shared experts ran inside the aux-stream context {stream.entered} time(s), "
          f"aux stream synchronised {stream.waits} time(s), output right: {same}")
    if stream.entered != 1 or not same:
        failures.append("SharedExperts.forward did not run the shared experts on the aux stream on ROCm")


if __name__ == "__main__":
    sys.exit(main())
