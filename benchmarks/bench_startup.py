"""Start-up time of the commands a user types most, as a ratio to `python -c pass` measured in the same run.

Target (issue: first hour): `vpatch --help`, `vpatch lint` and `vpatch status` within 150 ms wall on an idle
machine. Runs each command ROUNDS times, interleaved (so load changes hit all alike), in a scratch series with
an applied workspace, and prints min / median wall time and the ratio of medians to the interpreter's own start.

    python benchmarks/bench_startup.py [--rounds 30]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def scratch_series(root: Path) -> Path:
    """The shipped series file and entries, copied, with a workspace made by git (no vpatch apply needed)."""
    fork = root / "fork"
    shutil.copytree(REPO / "patches", fork / "patches")
    shutil.copytree(REPO / "overlay", fork / "overlay")
    ws = fork / ".vpatch" / "vllm"
    ws.mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x.invalid", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@x.invalid"}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "commit", "-q", "--allow-empty", "-m", "base"]):
        subprocess.run(argv, cwd=ws, check=True, env=env)
    return fork


# Bytecode as a user has it: an installed or once-run vpatch has its .pyc files. With
# PYTHONDONTWRITEBYTECODE set (some CI images set it), every run would compile vpatch's ~60 modules again
# (~80 ms here), which is the environment's cost, not vpatch's; a warm-up round writes them.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    vp = [sys.executable, "-m", "vpatch.manager.cli.main"]
    cmds = {"python -c pass": [sys.executable, "-c", "pass"], "vpatch --help": [*vp, "--help"],
            "vpatch lint": [*vp, "lint"], "vpatch status": [*vp, "status"]}
    with tempfile.TemporaryDirectory() as d:
        fork = scratch_series(Path(d))
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for argv in cmds.values():  # warm-up, not counted: page cache and .pyc files
            wall(argv, fork)
        for _ in range(a.rounds):
            for k, argv in cmds.items():
                times[k].append(wall(argv, fork))
    base = statistics.median(times["python -c pass"])
    print(f"load average {os.getloadavg()[0]:.2f}; {a.rounds} interleaved rounds")
    print(f"{'command':16} {'min ms':>8} {'median ms':>10} {'IQR ms':>8} {'ratio':>6}  target")
    for k, t in times.items():
        q = statistics.quantiles(t, n=4)
        med = statistics.median(t)
        verdict = "" if k.startswith("python") else ("<= 150 ms" if min(t) <= 150 else "OVER 150 ms (min)")
        print(f"{k:16} {min(t):8.1f} {med:10.1f} {q[2] - q[0]:8.1f} {med / base:6.2f}  {verdict}")


if __name__ == "__main__":
    main()
