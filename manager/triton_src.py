"""The series' Triton MoE kernels cut out of a (patched) fused_moe.py, without importing vLLM.

Pure source handling plus an import of the generated module; used by the gfx11 AOT build
(``kernels.py``) and by the CPU reference tests (``vpatch.validation.w4a16_ref``)."""
from __future__ import annotations


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
