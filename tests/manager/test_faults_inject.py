"""A small slice of benchmarks/bench_faults.py: real SIGKILLs of vpatch (alone, and with its git children)
in apply, apply --base, rebase and refresh on real git repositories; status + abort must get every trial
back to the state before or the complete state. The full run (100 + 100 trials) is the benchmark."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_faults  # noqa: E402


def test_fault_injection_slice(capsys):
    res = bench_faults.run(trials=5, modes=["alone", "group"], scenarios=list(bench_faults.SCENARIOS), seed=3,
                           n_files=60, n_entries=5)
    out = capsys.readouterr().out
    for mode in ("alone", "group"):
        ok = sum(v[0] for v in res[mode].values())
        n = sum(v[1] for v in res[mode].values())
        assert n == 5 and ok == n, out
