"""The gfx11 kernel build (vpatch.manager.kernels) on the series' kernel files.

HIP needs Debian's hipcc (`ci/install_hip.sh`); Triton's AMD backend compiles gfx1100 and
gfx1151 ahead of time with no GPU.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from vpatch.manager import kernels as K
from vpatch.validation import w4a16_ref as R

REPO = Path(__file__).resolve().parents[2]


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


def test_hip_dense_wvsplitk_gfx1100_whole_source(report):
    """csrc/rocm/skinny_gemms.cu with the dense-wvsplitk-n1-tune entry, compiled whole (stand-in
    torch headers): its own dispatch instantiates the tuned one-row launch, which is built."""
    if K.find_hipcc() is None:
        pytest.skip(K.HIPCC_HINT + " (CI runs ci/install_hip.sh)")
    b = report.get("dense_wvsplitk", "gfx1100")
    assert b.status == "ok", (b.reason, b.log_tail)
    assert Path(b.code_object).stat().st_size > 0
    isa = Path(b.isa).read_text()
    unit = K.HIP_SOURCES[0]
    for sym in unit.census_kernels:  # the tune table's default (idx 10), fp16 and bf16
        assert f"\n{sym}" in isa, sym
    # the census is the tuned kernels only: YTILE 2 x UNRL 4 x A_CHUNK 16 / 2 fp16 pairs = 64 dots per
    # step of the hot loop (the bf16 kernel has no packed dot on gfx11), non-temporal weight loads
    thrds, ytile, wv, a_chunk, unrl, n = K.DENSE_WVSPLITK_TUNED
    assert b.hot_loop.get("v_dot2_f32_f16") == ytile * unrl * a_chunk // 2, b.hot_loop
    assert b.hot_loop.get("global_load_nt", 0) > 0
    assert b.census.get("vgprs_max", 0) > 0


def test_hip_source_edit_that_no_longer_matches_fails_with_the_reason(tmp_path):
    src = tmp_path / "tree" / K.HIP_SOURCES[0].source
    src.parent.mkdir(parents=True)
    src.write_text("// an upstream rewrite without the float2 union member\n")
    b = K.build_hip_source(tmp_path / "tree", tmp_path / "out", K.HIP_SOURCES[0], "gfx1100", "hipcc", 15)
    assert b.status == "failed" and "no longer matches" in b.reason and "kernels.py" in b.reason
    missing = K.build_hip_source(tmp_path / "none", tmp_path / "out", K.HIP_SOURCES[0], "gfx1100", "hipcc", 15)
    assert missing.status == "skipped" and "not in this tree" in missing.reason


def test_census_over_selected_kernels_keeps_their_notes():
    isa = "\n".join(["a:", "\tv_dot2_f32_f16 v1, v2, v3, v1", "\ts_endpgm", "; NumVgprs: 40",
                     "b:", "\tv_fma_f32 v1, v2, v3, v4", "\tv_fma_f32 v1, v2, v3, v4", "\ts_endpgm", "; NumVgprs: 99"])
    whole, _ = K.census(isa, ("b",))
    assert whole.get("v_fma_f32") == 2 and "v_dot2_f32_f16" not in whole and whole["vgprs_max"] == 99


def test_hip_gfx1151_unsupported_by_debian_toolchain(report):
    if K.find_hipcc() is None:
        pytest.skip(K.HIPCC_HINT)
    major = K.clang_major(K.find_hipcc())
    if major is not None and major >= 19:
        pytest.skip(f"this hipcc (clang {major}) can target gfx1151")
    for unit in ("moe_wvsplitk_int4", "moe_megakernel", "dense_wvsplitk"):
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


def test_megakernel_unit_follows_the_trees_launch(tmp_path):
    """Each megakernel tuning entry edits moe_megakernel_cfg.h; the build instantiates that launch."""
    assert K.hip_units(tmp_path) == K.HIP_UNITS  # no config header: the fixed design point
    cfg = tmp_path / K.MEGA_CFG_H
    cfg.parent.mkdir(parents=True)
    cfg.write_text("namespace vllm_moe_int4 {\nconstexpr MegaCfg kMegaCfg = {32, 2, 8, 16, 4};\n}\n")
    assert K.megakernel_cfg(tmp_path) == (32, 2, 8, 16, 4)
    mega = next(u for u in K.hip_units(tmp_path) if u.name == "moe_megakernel")
    assert all("<bf16_t,32,2,8,16,4," in i or "<__half,32,2,8,16,4," in i for i in mega.instantiations)
    gemv = next(u for u in K.hip_units(tmp_path) if u.name == "moe_wvsplitk_int4")
    assert gemv == K.HIP_UNITS[0]


def test_census_reads_register_use_and_occupancy():
    isa = "k:\n\tv_add_f32 v1, v2, v3\n\ts_endpgm\n; NumVgprs: 67\n; Occupancy: 8\n; NumVgprs: 101\n; Occupancy: 12\n"
    whole, _ = K.census(isa)
    assert whole["vgprs_max"] == 101 and whole["occupancy_min"] == 8
