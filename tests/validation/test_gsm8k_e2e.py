"""gsm8k through real lm-eval (local-completions against a server started in each prefix's tree):
`vpatch validate --per-entry --metric gsm8k` measures each prefix once and stores it (a second run
measures nothing), and `vpatch bisect --metric gsm8k` finds the entry whose "dequant bug" corrupts
answers, by per-question McNemar."""
from __future__ import annotations

import sys

import pytest

from conftest import SeriesDir, Upstream, make_patch

SERVE = '''import sys
import dequant
from vpatch.validation.tinymodel import main
main(["serve", "--corrupt-frac", str(dequant.CORRUPT_FRAC)] + sys.argv[1:])
'''
CONFIG = '''[validate]
model = "vpatch-oracle"
[validate.gsm8k]
limit = 40
num_fewshot = 0
backend = "local-completions"
[measure]
python = "{py}"
serve = "{{python}} {{tree}}/serve.py --port {{port}}"
'''


def make_project(tmp_path, n_entries: int, bad: int) -> SeriesDir:
    up = Upstream(tmp_path / "model")
    up.write("serve.py", SERVE)
    up.write("dequant.py", "CORRUPT_FRAC = 0.0\n")
    for i in range(n_entries):
        up.write(f"kern/k{i}.py", f"# kernel {i}\n")
    up.commit("tiny model server", tag="v1.0.0")
    s = SeriesDir(tmp_path / "fork", "v1.0.0", str(up.path))
    for i in range(1, n_entries + 1):
        edits = {f"kern/k{i - 1}.py": f"# kernel {i - 1}\nFAST = True\n"}
        if i == bad:  # the dequant bug: a third of the answers go wrong
            edits["dequant.py"] = "CORRUPT_FRAC = 0.35\n"
        s.add_patch(f"k{i:02d}", make_patch(up, edits, f"kernel {i}"))
        if i == bad:
            up.write("dequant.py", "CORRUPT_FRAC = 0.35\n")
            up.commit("carry")
    (s.root / "vpatch.toml").write_text(CONFIG.format(py=sys.executable))
    return s


@pytest.mark.timeout(900)
def test_validate_gsm8k_per_entry_then_nothing_new(tmp_path, vp):
    s = make_project(tmp_path, 3, bad=2)
    assert vp(s.root, "apply").rc == 0
    r = vp(s.root, "--json", "validate", "--per-entry", "--metric", "gsm8k")
    assert r.rc == 0, r.err
    rows = {x["entry"]: x for x in r.json["rows"]}
    assert r.json["measured_boots"] == 4  # base + 3 prefixes, one lm-eval run each
    assert rows["k01"]["verdict"] == "same" or rows["k01"]["comparison"]["only_a"] + rows["k01"]["comparison"]["only_b"] == 0
    assert rows["k02"]["verdict"] == "worse", rows["k02"]["describe"]
    assert rows["k02"]["comparison"]["acc_a_pct"] == 100.0 and rows["k02"]["comparison"]["acc_b_pct"] < 90.0
    r2 = vp(s.root, "--json", "validate", "--per-entry", "--metric", "gsm8k")
    assert r2.rc == 0 and r2.json["measured_boots"] == 0
    assert [x["describe"] for x in r2.json["rows"]] == [x["describe"] for x in r.json["rows"]]


@pytest.mark.timeout(900)
def test_bisect_gsm8k_finds_the_corrupting_entry(tmp_path, vp):
    s = make_project(tmp_path, 8, bad=6)
    assert vp(s.root, "apply").rc == 0
    r = vp(s.root, "--json", "bisect", "--metric", "gsm8k", timeout=900)
    assert r.rc == 0, r.err
    res = r.json["result"]
    assert res["status"] == "found" and res["culprit_label"] == "k06", res
    assert len(r.json["log"]) <= 5  # bad end + ⌈log2 8⌉ probes
