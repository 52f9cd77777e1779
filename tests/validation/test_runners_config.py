"""The [validate] table of vpatch.toml."""
from __future__ import annotations

import pytest

from vpatch.validation.config import (
    DEFAULT_MODEL,
    ConfigError,
    ValidateConfig,
    gb_to_fraction,
    load_validate_config,
)


def write(tmp_path, text):
    p = tmp_path / "vpatch.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_seed_setup(tmp_path):
    c = load_validate_config(write(tmp_path, "[series]\nname='x'\n"))
    assert c.model == DEFAULT_MODEL == "cyankiwi/Qwen3-Omni-30B-A3B-Thinking-AWQ-4bit"
    assert (c.input_len, c.output_len, c.max_model_len, c.trust_remote_code) == (128, 128, 4096, True)
    assert c.readiness_timeout_s == 2700 and c.dtype is None
    assert c.gsm8k.backend == "local-completions" and c.gsm8k.batch_size == 1


def test_full_table_parses(tmp_path):
    c = load_validate_config(write(tmp_path, """
[validate]
dtype = "float16"
gpu_memory_gb = 24
runs_per_boot = 2
boots_min = 4
boots_max = 10
extra_args = ["--max-num-seqs", "1"]
[validate.env]
VLLM_ROCM_USE_AITER = 0
FLAG = true
[validate.gsm8k]
limit = 50
num_fewshot = 3
backend = "vllm"
"""))
    assert c.dtype == "float16" and c.env == {"VLLM_ROCM_USE_AITER": "0", "FLAG": "1"}
    assert c.gsm8k.limit == 50 and c.gsm8k.backend == "vllm" and c.extra_args == ("--max-num-seqs", "1")


def test_hash_is_stable_and_keyed_on_what_is_measured(tmp_path):
    implicit = ValidateConfig()
    explicit = load_validate_config(write(tmp_path, f"[validate]\noutput_len = 128\nmodel = '{DEFAULT_MODEL}'\n"))
    assert implicit.config_hash() == explicit.config_hash()
    assert len(implicit.config_hash()) == 64
    # known value: a change to the canonical form would silently orphan every stored result
    assert ValidateConfig(env={"B": "1", "A": "2"}).config_hash() == ValidateConfig(env={"A": "2", "B": "1"}).config_hash()
    # not part of what is measured: sampling budget, timeouts
    assert ValidateConfig(boots_max=50, readiness_timeout_s=10).config_hash() == implicit.config_hash()
    # part of it
    assert ValidateConfig(output_len=64).config_hash("latency") != implicit.config_hash("latency")
    assert ValidateConfig(dtype="float16").config_hash("latency") != implicit.config_hash("latency")
    # per kind: a gsm8k change keeps TPOT results comparable, an output_len change keeps gsm8k ones
    g = ValidateConfig(gsm8k={"limit": 10})
    assert g.config_hash("latency") == implicit.config_hash("latency")
    assert g.config_hash("accuracy") != implicit.config_hash("accuracy")
    assert ValidateConfig(output_len=64).config_hash("accuracy") == implicit.config_hash("accuracy")
    assert implicit.config_hash("latency") != implicit.config_hash("accuracy")


@pytest.mark.parametrize("text, needle", [
    ("[validate]\ninput_len = 'lots'\n", "input_len"),
    ("[validate]\nbogus = 1\n", "bogus"),
    ("[validate]\nboots_min = 5\nboots_max = 2\n", "boots_max"),
    ("[validate]\ninput_len = 4000\noutput_len = 200\n", "max_model_len"),
    ("[validate.gsm8k]\nbackend = 'openai'\n", "backend"),
    ("[validate.env]\n'BAD NAME' = '1'\n", "environment variable"),
    ("[validate\n", "not valid TOML"),
])
def test_errors_name_the_file_and_the_key(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_validate_config(p)
    assert str(p) in ei.value.message and needle in ei.value.message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_validate_config(tmp_path / "nope.toml")


def test_gpu_memory_gb_becomes_a_fraction_of_the_device():
    assert ValidateConfig(gpu_memory_gb=24).gpu_memory_utilization(96.0) == 0.25
    assert ValidateConfig(gpu_memory_gb=24, device_memory_gb=48).gpu_memory_utilization(96.0) == 0.5
    assert ValidateConfig().gpu_memory_utilization(96.0) is None
    assert gb_to_fraction(10, 30) == 0.3333  # rounded down: never asks for more than configured
    with pytest.raises(ConfigError, match="more than the device"):
        gb_to_fraction(100, 64)
    with pytest.raises(ConfigError, match="total memory") as ei:
        ValidateConfig(gpu_memory_gb=24).gpu_memory_utilization(None)
    assert "device_memory_gb" in ei.value.hint
