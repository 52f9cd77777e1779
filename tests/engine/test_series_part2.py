"""Series part 2 (the gfx11 kernel entries) on real vLLM v0.28.0 source from the pypi source:
the whole series applies, each claim sits on the entry whose prefix first shows its effect, and
each kernel-side entry's effect check passes on its prefix and fails on the prefix before it.

Markers: `vllm` (vpatch apply of the full series, ~10 s with the release repo cached), `venv`
(the checks run in part 1's python-only v0.28.0 runtime with each prefix tree first on sys.path;
~14 min on this 2-core machine at load 20-30 with 24 check runs; 30 since moe-int4-bf16-sub-nocanon,
32 since moe-megakernel-act-sum, 34 since moe-megakernel's own; 265 s warm here in session 8).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import REPO_ROOT, git
from test_series_part1 import apply_reusing, part1_cache, release_repo, runtime28, fork28  # noqa: F401 (fixtures)

PATCHES = REPO_ROOT / "patches"
# entry -> (its effect check and arguments, the entry before it in the series)
KERNEL_CHECKS = {
    "moe-int4-wvsplitk": (["moe_int4_wvsplitk.py"], "shared-experts-stream-gate"),
    "fused-moe-hybrid-w4a16": (["fused_moe_hybrid_w4a16.py"], "moe-int4-wvsplitk"),
    "moe-int4-bf16-dequant": (["moe_int4_bf16_dequant.py"], "fused-moe-hybrid-w4a16"),
    "fused-moe-hybrid-prefill-tiles": (["fused_moe_hybrid_prefill_tiles.py"], "moe-int4-bf16-dequant"),
    "moe-int4-tune": (["moe_int4_tune.py"], "fused-moe-hybrid-prefill-tiles"),
    "moe-int4-bf16-sub-nocanon": (["moe_int4_bf16_sub_nocanon.py"], "moe-int4-tune"),
    "moe-int4-dot2": (["moe_int4_dot2.py"], "moe-int4-bf16-sub-nocanon"),
    "dense-wvsplitk-n1-tune": (["dense_wvsplitk_n1_tune.py"], "moe-int4-dot2"),
    "dense-w4a16-prefill-carveouts": (["dense_w4a16_prefill_carveouts.py"], "dense-wvsplitk-n1-tune"),
    "moe-megakernel": (["moe_megakernel.py"], "dense-w4a16-prefill-carveouts"),
    "moe-megakernel-binding": (["moe_megakernel_binding.py"], "moe-megakernel"),
    "moe-megakernel-waves-8": (["moe_megakernel_cfg.py", "--min-waves", "8"], "moe-megakernel-binding"),
    "moe-megakernel-waves-12": (["moe_megakernel_cfg.py", "--min-waves", "12"], "moe-megakernel-waves-8"),
    "moe-megakernel-waves-16": (["moe_megakernel_cfg.py", "--min-waves", "16"], "moe-megakernel-waves-12"),
    "moe-megakernel-achunk-32": (["moe_megakernel_cfg.py", "--min-waves", "16", "--a-chunk", "32"],
                                 "moe-megakernel-waves-16"),
    "moe-megakernel-fuse-silu": (["moe_megakernel_binding.py", "--fuse-silu"], "moe-megakernel-achunk-32"),
    "moe-megakernel-act-sum": (["moe_megakernel_act_sum.py"], "moe-megakernel-fuse-silu"),
}
NEEDS_GXX = ("moe_int4_tune.py", "dense_wvsplitk_n1_tune.py", "moe_megakernel_cfg.py")
# a gfx1100 device build (Debian's hipcc, ci/install_hip.sh)
NEEDS_HIPCC = ("moe_int4_dot2.py", "moe_int4_bf16_dequant.py", "moe_int4_bf16_sub_nocanon.py",
               "moe_megakernel_act_sum.py", "moe_megakernel.py")


def _series() -> dict:
    return tomllib.loads((PATCHES / "series.toml").read_text())


# --- fast: where the claims sit ------------------------------------------------------------------
def test_kernel_entries_in_order_with_checks():
    ids = [e["id"] for e in _series()["entry"]]
    for eid, (check, before) in KERNEL_CHECKS.items():
        assert ids.index(before) == ids.index(eid) - 1, (eid, before)
        entry = next(e for e in _series()["entry"] if e["id"] == eid)
        assert entry["checks"] == [" ".join([f"{{python}} {{series_dir}}/checks/{check[0]}", *check[1:]])]
        assert (PATCHES / "checks" / check[0]).is_file()


def test_megakernel_claims_sit_on_the_binding():
    entries = {e["id"]: e for e in _series()["entry"]}
    assert not entries["moe-megakernel"].get("claims"), "the overlay is not built: no effect there"
    steps = [eid for eid in entries if eid.startswith("moe-megakernel-")]
    chain = [(c["before"], c["after"]) for eid in steps for c in entries[eid]["claims"] if c["metric"] == "tpot"]
    # binding: default chain 13.70 vs the first megakernel 15.13 (slower), then each step's own pair
    assert chain == [(13.70, 15.13), (15.13, 14.33), (14.33, 14.15), (14.15, 13.79), (13.79, 13.61), (13.59, 13.50),
                     (13.48, 13.36)]
    assert entries["moe-megakernel-binding"]["claims"][0]["direction"] == "higher"
    assert all(c.get("gate") == "on" for eid in steps for c in entries[eid]["claims"])
    # the seed's gsm8k run was on the final kernel, after the dot stopped rounding each pair (act-sum)
    gsm8k = [eid for eid in steps for c in entries[eid]["claims"] if c["metric"] == "gsm8k"]
    assert gsm8k == ["moe-megakernel-act-sum"]


def test_claims_are_measured_pairs():
    """A claim with figures carries both ends of one measurement, never a splice of two baselines."""
    pairs = set()
    for e in _series()["entry"]:
        for c in e.get("claims", []):
            assert ("before" in c) == ("after" in c), (e["id"], c)
            if "before" in c:
                pairs.add((c["metric"], c["before"], c["after"]))
    # the figures of the seed's commit messages, each a pair measured together
    assert ("kernel:moe_gemm1", 79.7, 76.0) in pairs and ("kernel:moe_gemm2", 47.6, 43.0) in pairs
    assert ("kernel:moe_gemm1", 75.0, 66.4) in pairs and ("kernel:moe_gemm2", 47.0, 40.4) in pairs  # dot2
    assert ("tpot", 14.20, 13.88) in pairs and ("ttft", 278, 251) in pairs and ("ttft", 250, 246) in pairs
    assert ("tpot", 15.11, 14.74) in pairs  # the bf16 marlin-style dequant
    assert ("tpot", 14.63, 14.21) in pairs and ("kernel:moe_gemm1", 75.0, 72.0) in pairs  # no NaN canonicalisation
    assert ("kernel:moe_gemm2", 47.0, 41.4) in pairs
    assert ("tpot", 13.48, 13.36) in pairs  # the megakernel's activation-sum correction
    assert not any(m == "kernel:moe_gemm1" and a == 66.4 and b == 79.7 for m, b, a in pairs)


def test_kernel_claims_have_a_bench_that_prints_their_kernels():
    """Every `kernel:` claim has its entry's bench, and that bench knows the claimed kernel; off a
    gfx11 GPU the dense bench says why in one line and exits 77 (skip), printing no samples."""
    import sys

    for e in _series()["entry"]:
        kernels = {c["metric"].split(":", 1)[1] for c in e.get("claims", []) if c["metric"].startswith("kernel:")}
        if not kernels:
            continue
        assert "bench" in e, e["id"]
        script = e["bench"].split()[1].replace("{series_dir}", str(PATCHES))
        assert all(k in Path(script).read_text() for k in kernels), (e["id"], kernels)
    r = subprocess.run([sys.executable, str(PATCHES / "checks" / "bench_dense.py"), "--iters", "2"],
                       capture_output=True, text=True, timeout=300)
    try:
        import torch
        on_gfx11 = bool(torch.cuda.is_available() and getattr(torch.version, "hip", None)
                        and torch.cuda.get_device_properties(0).gcnArchName.startswith("gfx11"))
    except ImportError:
        on_gfx11 = False
    if not on_gfx11:
        assert r.returncode == 77 and r.stdout == "" and "skipping" in r.stderr, (r.returncode, r.stdout, r.stderr)


# --- vllm: the full series on v0.28.0, one tree per prefix ---------------------------------------
@pytest.fixture(scope="session")
def prefix_trees(part1_cache, release_repo) -> dict[str, Path]:
    """`vpatch apply` of the shipped series onto v0.28.0 (pypi source); every entry's commit
    exported (vllm/, csrc/rocm, CMakeLists.txt), cached by commit under $VPATCH_CACHE/part2/trees."""
    root = part1_cache.parent / "part2" / "fork"
    root.mkdir(parents=True, exist_ok=True)
    for d in ("patches", "overlay"):
        if (root / d).exists():
            shutil.rmtree(root / d)
        shutil.copytree(REPO_ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    args = ["--json", "apply", "--base", "v0.28.0", "--source", "pypi"]
    env = {"VPATCH_CACHE": str(part1_cache.parent)}
    r = apply_reusing(root, args, env)
    assert r.rc == 0, r.err + r.out
    ws = root / ".vpatch" / "vllm"
    trees = {}
    log = git(ws, "log", "--format=%H %(trailers:key=Vpatch-Entry,valueonly)", "refs/vpatch/base..HEAD")
    for line in log.splitlines():
        if not line.strip():
            continue
        sha, eid = line.split()
        d = part1_cache.parent / "part2" / "trees" / sha
        if not (d / ".complete").exists():
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            # what the checks read: the python package, the ROCm sources, CMake's source list
            archive = subprocess.run(["git", "-C", str(ws), "archive", sha, "--", "vllm", "csrc/rocm",
                                      "CMakeLists.txt"], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(d)], input=archive.stdout, check=True)
            (d / ".complete").write_text(sha)
        trees[eid] = d
    return trees


@pytest.mark.vllm
def test_full_series_applies_on_v0_28(prefix_trees):
    assert set(KERNEL_CHECKS) <= set(prefix_trees)
    top = prefix_trees["moe-megakernel-binding"]
    # the two changes the fork measured and the series now carries
    assert (top / "csrc/rocm/wvsplitk_tune.h").is_file()
    assert "_GFX1151_M128_CARVEOUTS" in (
        top / "vllm/model_executor/kernels/linear/mixed_precision/rdna_hybrid_w4a16.py").read_text()
    assert "VLLM_MOE_INT4_TUNE_IDX" in (top / "vllm/envs.py").read_text()


# --- venv: each check sees its entry's effect --------------------------------------------------
def _run_check(python: Path, check: list[str], tree: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(tree)  # part 1's v0.28.0 runtime with this prefix's tree first
    return subprocess.run([str(python), str(PATCHES / "checks" / check[0]), *check[1:]], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.venv
@pytest.mark.parametrize("eid", sorted(KERNEL_CHECKS))
def test_check_passes_on_its_prefix_and_fails_before(runtime28, prefix_trees, eid):
    check, before = KERNEL_CHECKS[eid]
    if shutil.which("g++") is None and check[0] in NEEDS_GXX:
        pytest.skip("needs g++")
    if shutil.which("hipcc") is None and check[0] in NEEDS_HIPCC:
        pytest.skip("needs hipcc (ci/install_hip.sh)")
    r = _run_check(runtime28, check, prefix_trees[eid])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "PASS" in r.stdout and "cannot cover on CPU:" in r.stdout
    r = _run_check(runtime28, check, prefix_trees[before])
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "FAIL" in r.stdout
    if eid == "dense-wvsplitk-n1-tune":
        assert "SIGFPE" in r.stdout  # the old mindiv() divides by zero with 4 waves
    if eid == "moe-int4-dot2":
        assert "v_dot2_f32_bf16 0," in r.stdout  # the scalar fp32 dot before the entry
    if eid == "moe-int4-bf16-dequant":
        assert "v_and_or_b32 0" in r.stdout  # the scalar per-nibble dequant before the entry
    if eid == "moe-int4-bf16-sub-nocanon":
        nan = re.search(r"NaN tests (\d+),", r.stdout)  # one per subtracted half (128 a k step) before the entry
        assert nan and int(nan.group(1)) >= 128, r.stdout[-3000:]
    if eid == "moe-megakernel-act-sum":
        sub = re.search(r"fp32 subtracts of 136 (\d+),", r.stdout)  # one per weight (256 a k step) before the entry
        assert sub and int(sub.group(1)) >= 256, r.stdout[-3000:]
