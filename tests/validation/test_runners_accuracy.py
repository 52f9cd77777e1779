"""gsm8k through real lm-eval 0.4.13 from local files, the oracle server and the tiny model."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from vpatch.validation.config import ValidateConfig
from vpatch.validation.runners.accuracy import FILTERS, TASK_NAME, read_results, run_gsm8k, write_task
from vpatch.validation.runners.process import RunnerError, Server, free_port
from vpatch.validation.store import RunContext, new_boot_id, open_store
from vpatch.validation.tinymodel import (
    build_tiny_model,
    corrupt_model,
    corrupted_indices,
    default_data_dir,
    oracle_argv,
    read_jsonl,
)

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(not (DATA / "test.jsonl").exists(), reason=f"GSM8K not found at {DATA}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_task_is_lm_evals_gsm8k_on_local_files(tmp_path):
    import lm_eval

    ours = yaml.safe_load(write_task(tmp_path, DATA, 5).read_text())
    theirs = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    for key in ("doc_to_text", "doc_to_target", "filter_list", "metric_list", "generation_kwargs", "output_type",
                "test_split", "fewshot_split", "training_split"):
        assert ours[key] == theirs[key], key
    assert ours["task"] == TASK_NAME and ours["dataset_path"] == "json" and "dataset_name" not in ours
    files = ours["dataset_kwargs"]["data_files"]
    assert Path(files["test"]) == (DATA / "test.jsonl").resolve() and Path(files["train"]).name == "train.jsonl"
    with pytest.raises(RunnerError, match="missing"):
        write_task(tmp_path / "x", tmp_path, 5)


def test_oracle_corruption_shows_as_per_question_drop_through_real_lm_eval(tmp_path):
    limit, frac = 8, 0.5
    cfg = ValidateConfig(gsm8k={"limit": limit, "max_gen_toks": 64})
    bad = corrupted_indices(read_jsonl(DATA / "test.jsonl"), frac, limit=limit)
    assert 0 < len(bad) < limit  # the fixed seed gives a mix; the test needs both kinds
    port = free_port()
    env = dict(os.environ, VPATCH_TINY_CORRUPT_FRAC=str(frac))  # the "gate" that breaks it
    with Server(oracle_argv(sys.executable, port), port=port, env=env, log=tmp_path / "srv.log",
                readiness_timeout_s=60, poll_interval_s=0.1) as srv:
        res = run_gsm8k(tmp_path / "run", cfg, backend="local-completions", base_url=srv.base_url,
                        served_model="vpatch-oracle")
    for f in FILTERS:
        assert res.filters[f].n == limit
        assert res.filters[f].exact_match == pytest.approx(1 - len(bad) / limit)
        assert res.filters[f].stderr and res.filters[f].stderr > 0
        assert {q for q, ok in res.items[f].items() if not ok} == bad
        assert set(res.items[f]) == set(range(limit))
    # and it lands in the store, paired by question
    with open_store(tmp_path / "r.db") as st:
        ctx = RunContext(tree="t", base="v0.28.0", config_hash=cfg.config_hash("accuracy"),
                         config_content=cfg.canonical("accuracy"), host={"id": "h"})
        boot = new_boot_id()
        for f in FILTERS:
            st.add_accuracy_items(ctx, res.items[f].items(), filter_name=f, boot_id=boot)
            st.add_samples(ctx, f"gsm8k:{f}", [res.filters[f].exact_match], unit="fraction", boot_id=boot)
        assert st.accuracy_items("t", cfg.config_hash("accuracy"), "strict-match") == res.items["strict-match"]


def test_hf_backend_on_the_tiny_model_fully_offline(tmp_path, tiny_model):
    cfg = ValidateConfig(gsm8k={"limit": 2, "max_gen_toks": 8, "num_fewshot": 0})
    # an empty HF home: nothing cached to fall back on, and the offline variables run_gsm8k always sets
    res = run_gsm8k(tmp_path / "run", cfg, backend="hf", model_dir=tiny_model, env={"HF_HOME": str(tmp_path / "hf")})
    assert set(res.filters) == set(FILTERS) and all(r.n == 2 for r in res.filters.values())
    assert set(res.items["strict-match"]) == {0, 1}
    assert res.lm_eval_version is None or res.lm_eval_version.startswith("0.4")


def test_tiny_model_is_small_two_layer_and_corruptible(tmp_path, tiny_model):
    from safetensors.numpy import load_file

    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["model_type"] == "llama"
    w0 = load_file(str(tiny_model / "model.safetensors"))
    assert 100_000 < sum(a.size for a in w0.values()) < 400_000
    tok = json.loads((tiny_model / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE" and tok["pre_tokenizer"]["type"] == "ByteLevel"
    again = build_tiny_model(tmp_path / "again", seed=0)
    w_again = load_file(str(again / "model.safetensors"))
    assert all((w0[k] == w_again[k]).all() for k in w0)  # deterministic per seed
    bad = corrupt_model(tiny_model, tmp_path / "bad", scale=0.5)
    w1 = load_file(str(bad / "model.safetensors"))
    assert set(w0) == set(w1) and any(abs(w0[k] - w1[k]).max() > 0 for k in w0)
    assert (bad / "tokenizer.json").exists()


def test_missing_results_are_a_clear_error(tmp_path):
    with pytest.raises(RunnerError, match="no results_"):
        read_results(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "results_1.json").write_text(json.dumps({"results": {TASK_NAME: {"exact_match,strict-match": 1}}}))
    (tmp_path / "m" / f"samples_{TASK_NAME}_1.jsonl").write_text("")
    with pytest.raises(RunnerError, match="flexible-extract"):
        read_results(tmp_path)
