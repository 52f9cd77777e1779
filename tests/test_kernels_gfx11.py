"""The gfx11 kernel build (vpatch.manager.kernels) on the series' kernel files.

HIP needs Debian's hipcc (`ci/install_hip.sh`); Triton's AMD backend compiles gfx1100 and
gfx1151 ahead of time with no GPU.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from vpatch.manager import kernels as K
from vpatch.validation import w4a16_ref as R

REPO = Path(__file__).resolve().parent.parent


def test_census_counts_vopd_and_nontemporal():
    isa = "\n".join([
        "kern:",
        ".LBB0_1:",
        "\tglobal_load_b64 v[1:2], v[3:4], off slc dlc",
        "\tv_dual_dot2acc_f32_f16 v1, v2, v3 :: v_dual_dot2acc_f32_f16 v4, v5, v6",
        "\tv_dot2_f32_bf16 v7, v8, v9, v7",
        "\ts_cbranch_scc1 .LBB0_1",
        "\tv_bfe_u32 v1, v2, 4, 4",
        "\ts_endpgm",
    ])
    whole, loop = K.census(isa)
    assert loop["v_dot2_f32_f16"] == 2 and loop["v_dot2_f32_bf16"] == 1 and loop["global_load_nt"] == 1
    assert "v_bfe_u32" not in loop and whole["v_bfe_u32"] == 1


def test_missing_hipcc_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(K, "find_hipcc", lambda: None)
    rep = K.check_kernels(tmp_path / "empty-tree", tmp_path / "out", triton_archs=())
    assert {b.status for b in rep.builds} == {"skipped"}
    assert all("apt-get install" in b.reason and "hipcc" in b.reason for b in rep.builds)
    assert rep.ok and (tmp_path / "out" / "report.json").is_file()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    try:
        tree = R.build_kernel_tree(REPO, tmp_path_factory.mktemp("kernel-tree"))
    except RuntimeError as e:
        pytest.skip(str(e))
    return K.check_kernels(tree, tmp_path_factory.mktemp("gfx11-build"))


def test_hip_gfx1100_builds(report):
    if K.find_hipcc() is None:
        pytest.skip(K.HIPCC_HINT + " (CI runs ci/install_hip.sh)")
    for unit in ("moe_wvsplitk_int4", "moe_megakernel"):
        b = report.get(unit, "gfx1100")
        assert b.status == "ok", (b.reason, b.log_tail)
        assert Path(b.code_object).stat().st_size > 0 and Path(b.isa).is_file()
        assert ".amdhsa_group_segment_fixed_size" in Path(b.isa).read_text()
        # hot loop: packed bf16 dot, fp16 dot + magic-number dequant, non-temporal weight loads
        assert b.hot_loop.get("v_dot2_f32_bf16", 0) > 0
        assert b.hot_loop.get("v_dot2_f32_f16", 0) > 0
        assert b.hot_loop.get("v_pk_fma_f16", 0) > 0
        assert b.hot_loop.get("global_load_nt", 0) > 0
    gemv = Path(report.get("moe_wvsplitk_int4", "gfx1100").isa).read_text()
    assert "slc dlc" in gemv
    assert ".amdhsa_group_segment_fixed_size 16384" in gemv  # the 16 KB LDS design point


def test_hip_gfx1151_unsupported_by_debian_toolchain(report):
    if K.find_hipcc() is None:
        pytest.skip(K.HIPCC_HINT)
    major = K.clang_major(K.find_hipcc())
    if major is not None and major >= 19:
        pytest.skip(f"this hipcc (clang {major}) can target gfx1151")
    for unit in ("moe_wvsplitk_int4", "moe_megakernel"):
        b = report.get(unit, "gfx1151")
        assert b.status == "unsupported"
        assert "gfx1151" in b.reason and "ROCm >= 6.3" in b.reason


@pytest.mark.parametrize("arch", ["gfx1100", "gfx1151"])
def test_triton_aot(report, arch):
    for v in K.TRITON_VARIANTS:
        b = report.get(v.name, arch)
        if b.status == "skipped" and "triton" in b.reason:
            pytest.skip(b.reason)
        assert b.status == "ok", (b.reason, b.log_tail)
        text = Path(b.isa).read_text()
        target = next(ln for ln in text.splitlines() if ".amdgcn_target" in ln)
        assert target.rstrip().rstrip('"').endswith(arch), target
        wmma = "v_wmma_f32_16x16x16_bf16" if v.dtype == "bf16" else "v_wmma_f32_16x16x16_f16"
        assert b.hot_loop.get(wmma, 0) > 0, b.hot_loop  # RDNA3 WMMA in the K loop
        assert b.hot_loop.get("v_bfe_u32", 0) + b.hot_loop.get("v_and_b32", 0) > 0  # nibble extraction
        assert Path(b.code_object).read_bytes()[:4] == b"\x7fELF"
    assert report.ok, report.summary()
