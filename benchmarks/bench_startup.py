"""Start-up time of the commands a user types most, as a ratio to `python -c pass` measured in the same run.

Target (issue: first hour): `vpatch --help`, `vpatch lint` and `vpatch status` within 150 ms wall on an idle
machine. Runs each command ROUNDS times, interleaved (so load changes hit all alike), in a scratch copy of the
shipped series with an empty workspace, and `status` also in a series of 20 entries applied onto a synthetic
upstream of 2,000 files; prints min / median wall time and the ratio of medians to the interpreter's own start.

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


def applied_series(root: Path, files: int = 2000, entries: int = 20) -> Path:
    """A series of `entries` one-line patches onto a synthetic upstream of `files` files, applied by
    `vpatch apply` (untimed): what `status` sees on a working fork (entries in sync to check, a tree to stat)."""
    env = {**ENV, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x.invalid", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@x.invalid"}
    up = root / "upstream"
    for i in range(files):
        f = up / f"pkg{i % 40}" / f"m{i}.py"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(f"x{j} = {j}\n" for j in range(30)))
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=up, check=True)
    subprocess.run(["git", "add", "-A"], cwd=up, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "v1"], cwd=up, check=True, env=env)
    subprocess.run(["git", "tag", "v1"], cwd=up, check=True)
    fork = root / "applied"
    (fork / "patches").mkdir(parents=True)
    lines = [f'[series]\nbase = "v1"\nsource = "{up}"\n']
    for k in range(entries):
        f = up / f"pkg{k % 40}" / f"m{k}.py"
        f.write_text(f.read_text().replace("x5 = 5\n", f"x5 = {k + 500}\n"))
        subprocess.run(["git", "commit", "-q", "-am", f"edit {k}"], cwd=up, check=True, env=env)
        patch = subprocess.run(["git", "format-patch", "-1", "--stdout", "HEAD"], cwd=up, check=True,
                               capture_output=True, text=True, env=env).stdout
        (fork / "patches" / f"e{k:02d}.patch").write_text(patch)
        lines.append(f'[[entry]]\nid = "e{k:02d}"\ntitle = "edit {k}"\n')
    (fork / "patches" / "series.toml").write_text("\n".join(lines))
    subprocess.run([sys.executable, "-m", "vpatch.manager.cli.main", "-q", "apply"], cwd=fork, check=True, env=ENV,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
            "vpatch lint": [*vp, "lint"], "vpatch status": [*vp, "status"], "status, 20 applied": [*vp, "status"]}
    with tempfile.TemporaryDirectory() as d:
        fork = scratch_series(Path(d))
        applied = applied_series(Path(d))
        where = {k: applied if k.startswith("status, ") else fork for k in cmds}
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for k, argv in cmds.items():  # warm-up, not counted: page cache, .pyc files, status's sync memo
            wall(argv, where[k])
        for _ in range(a.rounds):
            for k, argv in cmds.items():
                times[k].append(wall(argv, where[k]))
    base = statistics.median(times["python -c pass"])
    print(f"load average {os.getloadavg()[0]:.2f}; {a.rounds} interleaved rounds")
    print(f"{'command':20} {'min ms':>8} {'median ms':>10} {'IQR ms':>8} {'ratio':>6}  median <= 150 ms")
    for k, t in times.items():
        q = statistics.quantiles(t, n=4)
        med = statistics.median(t)
        verdict = "" if k.startswith("python") else ("met" if med <= 150 else "NOT met")
        print(f"{k:20} {min(t):8.1f} {med:10.1f} {q[2] - q[0]:8.1f} {med / base:6.2f}  {verdict}")


if __name__ == "__main__":
    main()
