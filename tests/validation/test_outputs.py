"""The outputs metric's parsing and comparison (pure), and the cpu run configuration."""
from __future__ import annotations

import pytest
from vpatch.validation.config import ValidateConfig, cpu_config
from vpatch.validation.runners.outputs import compare_outputs, parse_completion
from vpatch.validation.runners.process import RunnerError


def _resp(ids, lps):
    top = [{f"token_id:{i}": lp, "token_id:999": lp - 1} for i, lp in zip(ids, lps, strict=True)]
    return {"choices": [{"logprobs": {"tokens": [f"token_id:{i}" for i in ids], "top_logprobs": top}}]}


def test_parse_completion_reads_ids_and_sorted_top_logprobs():
    out = parse_completion(_resp([5, 7], [-0.5, -1.0]))
    assert out["token_ids"] == [5, 7]
    assert out["top_logprobs"][0] == [[5, -0.5], [999, -1.5]]


def test_parse_completion_refuses_text_tokens():
    with pytest.raises(RunnerError, match="token_id:N"):
        parse_completion({"choices": [{"logprobs": {"tokens": ["hello"], "top_logprobs": []}}]})


def _out(p, ids):
    return {"prompt": p, "token_ids": ids, "top_logprobs": [[[i, -0.1]] for i in ids]}


def test_identical_and_first_diverging_position():
    a = [_out(0, [1, 2, 3]), _out(1, [4, 5, 6])]
    assert compare_outputs(a, [dict(x) for x in a]).verdict == "identical"
    c = compare_outputs(a, [_out(0, [1, 2, 3]), _out(1, [4, 9, 6])])
    assert c.verdict == "differs" and c.diverging == {1: 1}
    assert "prompt 1 at token 1" in c.describe()
    assert compare_outputs(a, [_out(0, [1, 2]), _out(1, [4, 5, 6])]).diverging == {0: 2}  # shorter


def test_outputs_of_different_prompt_sets_are_not_compared():
    with pytest.raises(RunnerError, match="different prompt sets"):
        compare_outputs([_out(0, [1])], [_out(1, [1])])


def test_cpu_config_profile_and_overrides():
    base = ValidateConfig(seed=3, cpu={"output_len": 16, "env": {"X": "1"}, "gsm8k": {"limit": 5}})
    c = cpu_config(base, "/models/m")
    assert c.model == "/models/m" and c.dtype == "float32" and c.max_model_len == 512 and c.seed == 3
    assert c.output_len == 16 and c.env["X"] == "1" and c.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert c.gsm8k.limit == 5 and c.device == "cpu" and "--enforce-eager" in c.extra_args
    # the GPU default keeps its earlier hash (no 'device' key in it)
    assert "device" not in ValidateConfig().canonical("latency") and c.canonical("latency")["device"] == "cpu"
