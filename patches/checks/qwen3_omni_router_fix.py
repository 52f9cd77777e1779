"""Effect check for the `qwen3-omni-router-fix` entry: when the fused-MoE runner owns the router
gate, Qwen3MoeSparseMoeBlock.forward must not call the gate itself (one router GEMV per layer and
step, not two), and the block's output must be what one router evaluation gives.

Written for v0.19.0-based workspaces (the fix is upstream from v0.20.0; `vpatch verify` skips the
entry where it is not applied). Run with the python of the workspace's python-only install.
Exit 0: pass; 1: fail; 2: the check could not run.

How: the workspace's real `Qwen3MoeSparseMoeBlock.forward` runs on a block whose `gate` is a
counting linear layer and whose `experts` stands in for SharedFusedMoE: it owns the gate the way
v0.19.0's runner does (the runner's own `_maybe_gate` is used when it exists: it calls the gate and
ignores the router_logits it was handed) and computes a small top-k MoE from those logits.  The
gate calls per forward are counted and the output compared with a reference that evaluates the
router once.  The same block is also run with a runner that does NOT own the gate (the block must
then compute the logits itself, exactly once).
"""
from __future__ import annotations

import sys
import traceback

from _scope import announce, verdict  # noqa: E402 (beside this script)

HIDDEN, EXPERTS, TOPK, INTER, TOKENS = 64, 8, 2, 32, 5

COVERS = [
    "the workspace's Qwen3MoeSparseMoeBlock.forward (the real code), single rank, no sequence parallelism",
    "gate calls per forward with a runner that owns the gate (expected 1) and with one that does not (1)",
    "the output against a reference MoE evaluated with one router call",
    "which blocks have a runner owning the gate in this vLLM (FusedMoE.is_internal_router, "
    "read from the real property with and without shared experts)",
]
CANNOT = [
    "the real FusedMoE/SharedFusedMoE kernels and quantized (AWQ) experts: the experts are a torch stand-in",
    "tensor/sequence/expert parallel paths (all-reduce, all-gather) and the end-to-end TPOT gain",
]


class CountingGate:
    def __init__(self, weight):
        import torch

        self.weight = weight
        self.calls = 0
        self._torch = torch

    def __call__(self, x):
        self.calls += 1
        return x @ self.weight.t(), None


def make_experts(gate, owns_gate: bool, returns_tuple: bool, runner_gate_fn):
    """A SharedFusedMoE stand-in: top-k softmax routing over small SiLU MLP experts."""
    import torch

    g = torch.Generator().manual_seed(1)
    w1 = torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=g) / HIDDEN ** 0.5
    w2 = torch.randn(EXPERTS, HIDDEN, INTER, generator=g) / INTER ** 0.5

    class Experts:
        def __init__(self):
            self.is_internal_router = owns_gate
            # what v0.19.0's FusedMoE hands its runner: the gate only when it owns it
            self.gate = gate if owns_gate else None
            self.received_logits = None

        def __call__(self, hidden_states, router_logits):
            self.received_logits = router_logits
            if runner_gate_fn is not None:
                logits = runner_gate_fn(self, hidden_states, router_logits)
            else:
                logits = self.gate(hidden_states)[0] if self.gate is not None else router_logits
            out = moe(hidden_states, logits, w1, w2)
            return (None, out) if returns_tuple else out

        def maybe_all_reduce_tensor_model_parallel(self, x):
            return x

    return Experts()


def moe(x, logits, w1, w2):
    import torch
    import torch.nn.functional as F

    probs = torch.softmax(logits.float(), dim=-1)
    topw, topi = probs.topk(TOPK, dim=-1)
    topw = topw / topw.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(TOPK):
            e = int(topi[t, j])
            h = w1[e] @ x[t]
            a, b = h.chunk(2)
            out[t] += topw[t, j].to(x.dtype) * (w2[e] @ (F.silu(a) * b))
    return out


def main() -> int:
    announce("qwen3-omni-router-fix", COVERS, CANNOT)
    try:
        import torch
        from torch import nn

        from vllm.model_executor.models.qwen3_moe import Qwen3MoeSparseMoeBlock
    except Exception as e:
        print(f"ERROR: cannot import vLLM's qwen3_moe: {type(e).__name__}: {e}")
        return 2
    failures: list[str] = []
    try:
        runner_gate_fn = _runner_gate_fn()
        print(f"runner gate logic: {'DefaultMoERunner._maybe_gate (real)' if runner_gate_fn else 'stand-in'}")
        _report_ownership()
        fwd = Qwen3MoeSparseMoeBlock.forward
        returns_tuple = "shared_out" in fwd.__code__.co_varnames
        g = torch.Generator().manual_seed(0)
        x = torch.randn(TOKENS, HIDDEN, generator=g)
        wg = torch.randn(EXPERTS, HIDDEN, generator=g)
        for owns in (True, False):
            gate = CountingGate(wg)
            block = Qwen3MoeSparseMoeBlock.__new__(Qwen3MoeSparseMoeBlock)
            nn.Module.__init__(block)
            experts = make_experts(gate, owns, returns_tuple, runner_gate_fn)
            object.__setattr__(block, "gate", gate)
            object.__setattr__(block, "experts", experts)
            block.is_sequence_parallel = False
            block.tp_size = 1
            out = fwd(block, x.clone())
            ref = _reference(x, wg, returns_tuple)
            same = torch.equal(out, ref)
            label = "runner owns the gate" if owns else "runner without the gate"
            print(f"  {label}: gate called {gate.calls} time(s) per forward, output equals the one-router "
                  f"reference: {same}")
            if gate.calls != 1:
                failures.append(f"{label}: the router gate ran {gate.calls} times in one forward (expected 1)"
                                + (": the block computes the logits although the runner does" if owns else ""))
            if not same:
                failures.append(f"{label}: output differs from the reference")
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: the check crashed: {type(e).__name__}: {e}")
        return 2
    return verdict(failures, "one router evaluation per forward, output unchanged")


def _reference(x, wg, returns_tuple):
    """The same stand-in experts, handed logits from exactly one router evaluation."""
    gate = CountingGate(wg)
    experts = make_experts(gate, False, returns_tuple, None)
    out = experts(x.clone(), gate(x.clone())[0])
    return out[1] if returns_tuple else out


def _runner_gate_fn():
    try:
        from vllm.model_executor.layers.fused_moe.runner.default_moe_runner import DefaultMoERunner
    except Exception:
        return None
    fn = getattr(DefaultMoERunner, "_maybe_gate", None)
    return fn


def _report_ownership() -> None:
    """Whether this vLLM's FusedMoE hands the gate to its runner, with and without shared experts."""
    try:
        from vllm.model_executor.layers.fused_moe.layer import FusedMoE
    except Exception as e:
        print(f"  (FusedMoE not importable: {e})")
        return
    prop = FusedMoE.__dict__.get("is_internal_router")
    if not isinstance(prop, property) or "use_overlapped" not in _names(FusedMoE.__dict__.get("gate")):
        print("  FusedMoE.is_internal_router does not depend on use_overlapped here: the runner owns the "
              "gate whenever the model passes one")
        return
    for overlapped in (True, False):
        m = FusedMoE.__new__(FusedMoE)
        object.__setattr__(m, "_gate", object())
        object.__setattr__(m, "use_overlapped", overlapped)
        try:
            owns = m.is_internal_router
        except Exception as e:
            owns = f"? ({e})"
        what = "with shared experts (overlapped mode)" if overlapped else "without shared experts (Qwen3-Omni)"
        print(f"  this vLLM's runner owns the gate {what}: {owns}")


def _names(obj) -> set:
    f = getattr(obj, "fget", obj)
    code = getattr(f, "__code__", None)
    return set(code.co_names) if code else set()


if __name__ == "__main__":
    sys.exit(main())
