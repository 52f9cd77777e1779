"""How fast is the drift scan? The whole series checked against each of N upstream commits (default 1,000)
on a synthetic but realistic history built on the real vLLM v0.28.0 tree, beside the naive way
(check out each commit, then ``git apply --check`` every entry), as a ratio from the same run.

The pypi source has one commit per release, so the history is made here with ``git fast-import``:
N commits that each edit one to three of vLLM's Python files (inserting, rewriting or deleting lines), some
of them the files the entries touch, a few right inside the entries' hunks, and one that makes the
shared-experts entry's own change upstream (so it turns ``already-upstream`` by patch-id).

Three timings, one run:

- ``vpatch scan``  — :class:`vpatch.manager.drift.Scan`: every commit's result, memoised on the blobs of the
  series' paths (one ``git log --raw`` for the range, then a check only where those blobs change);
- ``vpatch cold``  — the same index-only check run from scratch at every commit (``ls-tree`` + sparse index +
  ``git apply --cached`` per entry), no memo: the raw cost of one index-only check;
- ``naive``        — ``git checkout -f COMMIT`` in a work tree + ``git apply --check`` per entry. Timed on an
  evenly spaced sample (``--naive-sample``, default 100 commits; ``0`` = all) and extrapolated to N: said so
  in the output.

Run: ``VPATCH_CACHE=... .venv/bin/python benchmarks/bench_drift.py [--commits 1000] [--json]``
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
GIT_ID = {"GIT_AUTHOR_NAME": "Upstream Dev", "GIT_AUTHOR_EMAIL": "dev@upstream.invalid",
          "GIT_COMMITTER_NAME": "Upstream Dev", "GIT_COMMITTER_EMAIL": "dev@upstream.invalid"}


def _git(repo: Path, *args: str, input: bytes | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=repo, input=input, capture_output=True,
                       env={**os.environ, **GIT_ID, "LC_ALL": "C"})
    if r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:3])} failed: {r.stderr.decode(errors='replace')}")
    return r.stdout.decode(errors="surrogateescape").strip()


class _Blobs:
    """Contents of files at a commit, read on demand through one ``git cat-file --batch``."""

    def __init__(self, repo: Path, rev: str):
        self.rev = rev
        self.proc = subprocess.Popen(["git", "cat-file", "--batch"], cwd=repo, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def read(self, path: str) -> bytes | None:
        self.proc.stdin.write(f"{self.rev}:{path}\n".encode())
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().split()
        if len(header) < 3 or header[1] == b"missing":
            return None
        size = int(header[2])
        data = self.proc.stdout.read(size)
        self.proc.stdout.read(1)
        return data

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _random_edit(text: str, rng: random.Random, n: int) -> str:
    lines = text.split("\n")
    if len(lines) < 3:
        return text + f"# upstream change {n}\n"
    i = rng.randrange(1, len(lines) - 1)
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    op = rng.random()
    if op < 0.5:
        lines.insert(i, f"{indent}# upstream change {n}")
    elif op < 0.85:
        lines[i] = lines[i] + f"  # touched by change {n}" if lines[i].strip() else f"{indent}# change {n}"
    else:
        del lines[i]
    return "\n".join(lines)


Event = tuple[str, Callable[[str], str], str]  # (path, new text from old text, commit subject)


def make_history(repo: Path, start: str, n: int, *, seed: int = 0, pool: list[str] | None = None,
                 hot: list[str] = (), hot_rate: float = 0.02, events: dict[int, Event] | None = None,
                 ref: str = "refs/heads/upstream") -> list[str]:
    """Make ``n`` commits on ``ref`` from ``start`` with ``git fast-import``; return their shas, oldest first.

    Each commit edits one to three files of ``pool`` (default: the ``.py`` files under ``vllm/``, or all
    files) at random; with probability ``hot_rate`` one of ``hot`` instead; ``events[i]`` replaces commit i by
    a given edit (e.g. the change an entry makes, so that upstream "merges" it)."""
    rng = random.Random(seed)
    events = events or {}
    if pool is None:
        files = _git(repo, "ls-tree", "-r", "--name-only", start).splitlines()
        pool = [f for f in files if f.startswith("vllm/") and f.endswith(".py")] or files
    pool = sorted(pool)
    blobs = _Blobs(repo, start)
    current: dict[str, str] = {}

    def text_of(path: str) -> str:
        if path not in current:
            data = blobs.read(path)
            current[path] = data.decode("utf-8", "surrogateescape") if data is not None else ""
        return current[path]

    marks = Path(tempfile.mkstemp(prefix="vpatch-marks-")[1])
    stream: list[bytes] = []
    t0 = 1_767_225_600  # 2026-01-01
    for i in range(n):
        if i in events:
            path, fn, subject = events[i]
            changed = {path: fn(text_of(path))}
        else:
            k = rng.choice((1, 1, 1, 2, 3))
            paths = [rng.choice(hot)] if hot and rng.random() < hot_rate else rng.sample(pool, min(k, len(pool)))
            changed = {p: _random_edit(text_of(p), rng, i) for p in paths}
            subject = f"upstream change {i}: " + ", ".join(Path(p).name for p in changed)
        current.update(changed)
        msg = subject.encode() + b"\n"
        ts = t0 + i * 600
        stream.append(f"commit {ref}\nmark :{i + 1}\n".encode())
        stream.append(f"author Upstream Dev <dev@upstream.invalid> {ts} +0000\n".encode())
        stream.append(f"committer Upstream Dev <dev@upstream.invalid> {ts} +0000\n".encode())
        stream.append(f"data {len(msg)}\n".encode() + msg)
        if i == 0:
            stream.append(f"from {start}\n".encode())
        for p, text in changed.items():
            data = text.encode("utf-8", "surrogateescape")
            stream.append(f"M 100644 inline {p}\ndata {len(data)}\n".encode() + data + b"\n")
        stream.append(b"\n")
    stream.append(b"done\n")
    blobs.close()
    _git(repo, "fast-import", "--quiet", "--done", "--force", f"--export-marks={marks}", input=b"".join(stream))
    by_mark = dict(line.split() for line in marks.read_text().splitlines())
    marks.unlink()
    return [by_mark[f":{i + 1}"] for i in range(n)]


# --- the benchmark ------------------------------------------------------------------------------------

def vllm_history(repo: Path, series, n: int, seed: int = 1) -> tuple[str, list[str]]:
    """A history of ``n`` commits on v0.28.0 in ``repo`` (borrowing the pypi cache's objects)."""
    from vpatch.manager.sources import resolve_source
    from vpatch.manager.upstream import split_diff
    from vpatch.manager.entries import parse_patch
    from vpatch.manager.git import Git

    src = resolve_source("pypi")
    base = src.ensure("v0.28.0")
    if not (repo / "HEAD").exists():
        subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
        (repo / "objects" / "info" / "alternates").write_text(str(src.repo() / "objects") + "\n")
    g = Git(repo)
    g.run("update-ref", "refs/tags/v0.28.0", base)
    hot, events = [], {}
    patches_dir = series.path.resolve().parent
    for e in series.entries:
        f = patches_dir / e.patch_file
        if e.kind != "patch" or not f.exists():
            continue
        for fp in split_diff(parse_patch(f, g).diff):
            if fp.old_path:
                hot.append(fp.old_path)
    shared = "vllm/model_executor/layers/fused_moe/runner/shared_experts.py"
    if shared in hot:  # upstream makes the entry's own change, as its own commit, two thirds of the way
        events[(2 * n) // 3] = (shared, lambda t: t.replace("current_platform.is_cuda()\n            and self._stream",
                                                            "current_platform.is_cuda_alike()\n            and self._stream", 1),
                                "[ROCm] overlap shared experts on the aux stream on ROCm too")
    mrope = "vllm/model_executor/layers/rotary_embedding/mrope.py"
    if mrope in hot:  # and rewrites a line inside one of the MRoPE entry's hunks near the end
        events[(9 * n) // 10] = (mrope, lambda t: t.replace("cos_sin = cos_sin_cache[positions]",
                                                            "cos_sin = cos_sin_cache.index_select(0, positions)", 1),
                                 "[Perf] MRoPE: gather cos/sin with index_select")
    shas = make_history(repo, base, n, seed=seed, hot=sorted(set(hot)), hot_rate=0.03, events=events)
    g.run("update-ref", "refs/heads/upstream", shas[-1])
    return base, shas


def naive(repo: Path, series, commits: list[str], work: Path) -> float:
    """checkout + ``git apply --check`` of every entry at each commit; seconds."""

    patches_dir = series.path.resolve().parent
    patches = [str(patches_dir / e.patch_file) for e in series.entries
               if e.kind == "patch" and (patches_dir / e.patch_file).exists()]
    if not (work / ".git").exists():
        subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(repo), str(work)], check=True)
        _git(work, "checkout", "-q", "-f", commits[0])
    t = time.perf_counter()
    for c in commits:
        _git(work, "checkout", "-q", "-f", "--detach", c)
        for p in patches:
            subprocess.run(["git", "apply", "--check", p], cwd=work, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--naive-sample", type=int, default=100, help="commits timed the naive way (0 = all)")
    ap.add_argument("--series", type=Path, default=ROOT / "patches" / "series.toml")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT.parent))
    from vpatch.manager.drift import Scan
    from vpatch.manager.git import Git
    from vpatch.manager.series import load_series

    series = load_series(args.series)
    with tempfile.TemporaryDirectory(prefix="vpatch-bench-drift-") as tmp:
        repo = Path(tmp) / "upstream.git"
        t = time.perf_counter()
        base, shas = vllm_history(repo, series, args.commits)
        t_make = time.perf_counter() - t
        g = Git(repo)

        t = time.perf_counter()
        scan = Scan(g, series, base, shas[-1], from_name="v0.28.0")
        per_commit = [[(r.id, r.status) for r in scan.results_at(i)] for i in range(len(shas))]
        t_scan = time.perf_counter() - t
        runs = scan.checker.runs
        scan.close()

        t = time.perf_counter()
        cold = Scan(g, series, base, shas[-1], memo=False, from_name="v0.28.0")
        cold_results = [[(r.id, r.status) for r in cold.results_at(i)] for i in range(len(shas))]
        t_cold = time.perf_counter() - t
        cold.close()
        assert cold_results == per_commit, "memoised and cold scans disagree"

        k = len(shas) if args.naive_sample in (0, None) or args.naive_sample >= len(shas) else args.naive_sample
        sample = [shas[int(j * len(shas) / k)] for j in range(k)]
        t_naive_sample = naive(repo, series, sample, Path(tmp) / "work")
        t_naive = t_naive_sample * len(shas) / k

        changes = {}
        for i in range(1, len(per_commit)):
            for (eid, s0), (_, s1) in zip(per_commit[i - 1], per_commit[i], strict=False):
                if s0 != s1:
                    changes.setdefault(eid, []).append(f"{s0}->{s1} at commit #{i}")
        entries = [e.id for e in series.entries]
        res = {"commits": len(shas), "entries": len(entries), "make_history_s": round(t_make, 2),
               "vpatch_scan_s": round(t_scan, 3), "checks_run": runs,
               "vpatch_cold_s": round(t_cold, 2),
               "naive_s": round(t_naive, 1), "naive_measured_commits": k, "naive_sample_s": round(t_naive_sample, 2),
               "naive_extrapolated": k < len(shas),
               "ratio_naive_over_scan": round(t_naive / t_scan, 1), "ratio_naive_over_cold": round(t_naive / t_cold, 1),
               "status_changes": changes, "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"history: {res['commits']} commits on v0.28.0 made in {res['make_history_s']} s; series of {res['entries']} entries")
    print(f"vpatch scan (memoised, index-only): {res['vpatch_scan_s']:8.3f} s  ({runs} checks run for {len(shas)} commits)")
    print(f"vpatch cold (index-only per commit): {res['vpatch_cold_s']:7.2f} s")
    how = f"measured on {k} commits, extrapolated to {len(shas)}" if res["naive_extrapolated"] else "all commits"
    print(f"naive checkout + git apply --check: {res['naive_s']:8.1f} s  ({how})")
    print(f"ratio naive / vpatch scan: {res['ratio_naive_over_scan']}x   naive / vpatch cold: {res['ratio_naive_over_cold']}x")
    for eid, ch in changes.items():
        print(f"  {eid}: {'; '.join(ch)}")


if __name__ == "__main__":
    main()
