"""Apply the series onto vLLM v0.28.0 with vpatch vs `git am -3` of the same patches on the same tree.

Run on demand:  python benchmarks/bench_apply.py [--total N] [--repeats R]

Both sides start from the same fresh clone of the cached release repo (pypi source) at v0.28.0
with the work tree checked out, and apply the same patch files (the shipped series' patch entries
not merged at the base, up to its first overlay, then synthetic one-line edits of real vLLM files up to
N patches in all). vpatch does more per entry
(reverse-apply probe only on failure, trailers, a state file written after every entry for
abort/continue after a crash, the broken-Python check), so the ratio says what that safety costs.
"cold": vpatch's caches of pyflakes findings and of git's message answers (mailinfo, interpret-trailers)
empty, as on a first apply of these files on a machine; "warm": both filled by an untimed apply first.
The row "git apply" sends every patch through `git apply --cached` + `write-tree` + `commit-tree`
(VPATCH_GIT_APPLY=1: the path before the in-process apply). Prints one table and the ratio vpatch/git-am
from one run.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sh(*args, cwd=None, env=None):
    r = subprocess.run(list(args), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} failed: {r.stderr[-500:]}")
    return r.stdout.strip()


def synthetic_patches(repo: Path, tmp: Path, n: int) -> list[Path]:
    work = tmp / "synth"
    sh("git", "clone", "-q", str(repo), str(work))
    sh("git", "checkout", "-q", "-b", "synth", "v0.28.0", cwd=work)
    files = sh("git", "ls-files", "vllm/model_executor/layers", cwd=work).splitlines()
    files = [f for f in files if f.endswith(".py")][: n]
    out = []
    for i, f in enumerate(files):
        p = work / f
        p.write_text(p.read_text() + f"\n# vpatch bench edit {i}\n")
        sh("git", "commit", "-q", "-am", f"bench: edit {f}", cwd=work,
           env={"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"})
        pf = tmp / f"synth-{i:03d}.patch"
        pf.write_text(sh("git", "format-patch", "-1", "--stdout", "--zero-commit", "HEAD", cwd=work) + "\n")
        out.append(pf)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total", type=int, default=25, help="patches in all: the shipped ones, then synthetic one-line "
                    "patches on real files up to this many (default 25, the issue's benchmark)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from vpatch.manager.lint import load_checked
    from vpatch.manager.series import merged_at_or_before
    from vpatch.manager.sources import resolve_source

    series = load_checked(ROOT / "patches" / "series.toml")
    src = resolve_source("pypi")
    src.ensure(series.base)
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as t:
        if os.environ.get("BENCH_KEEP"):
            t = tempfile.mkdtemp(prefix="bench-apply-keep-")
        tmp = Path(t)
        # the shipped patch entries up to the first overlay: later patches build on the overlay's files,
        # which `git am` cannot lay down
        patches = []
        for e in series.entries:
            if e.kind == "overlay":
                break
            if not merged_at_or_before(e, series.base):
                patches.append(ROOT / "patches" / e.patch_file)
        patches += synthetic_patches(src.repo(), tmp, max(0, args.total - len(patches)))
        fork = tmp / "fork"
        (fork / "patches").mkdir(parents=True)
        lines = [f'[series]\nbase = "{series.base}"\nsource = "pypi"\n']
        for i, p in enumerate(patches):
            shutil.copy(p, fork / "patches" / f"p{i:03d}.patch")
            lines.append(f'[[entry]]\nid = "p{i:03d}"\ntitle = "{p.stem}"\n')
        (fork / "patches" / "series.toml").write_text("\n".join(lines))
        base_clone = tmp / "base"
        sh("git", "clone", "-q", str(src.repo()), str(base_clone))
        sh("git", "checkout", "-q", "--detach", "v0.28.0", cwd=base_clone)
        # vpatch's own cache, with everything but pycheck's findings shared (the release repo): "cold" starts
        # each repeat with no findings cached, as a first apply of these files on a machine does; "warm" is
        # the same apply into a fresh workspace again (a rebase, a check, a second workspace)
        from vpatch.manager.context import cache_dir
        real_cache = cache_dir()

        def vp_cache(name: str) -> Path:
            """A cache of vpatch's that shares everything but pycheck's findings; made empty of those."""
            c = tmp / name
            if c.exists():
                shutil.rmtree(c)
            c.mkdir()
            for item in real_cache.iterdir():
                if item.name not in ("pycheck", "git-text"):
                    (c / item.name).symlink_to(item)
            return c

        def vp_apply(ws: Path, cache: Path, git_apply: bool = False) -> None:
            sh(sys.executable, "-m", "vpatch.manager.cli.main", "-q", "--workspace", str(ws), "apply", cwd=fork,
               env={"VPATCH_CACHE": str(cache), **({"VPATCH_GIT_APPLY": "1"} if git_apply else {})})

        # the warm cache: filled once by an untimed apply into a throw-away workspace, before any timing
        warm_cache = vp_cache("vpcache-warm")
        sh("cp", "-a", str(base_clone), str(tmp / "warm"))
        sh("git", "-C", str(tmp / "warm"), "checkout", "-q", "-b", "vpatch/v0.28.0")
        vp_apply(tmp / "warm", warm_cache)
        shutil.rmtree(tmp / "warm")

        times: dict[str, list[float]] = {"vpatch (cold)": [], "vpatch (warm)": [], "vpatch, git apply (warm)": [],
                                         "git am -3": []}
        sides = list(times)
        heads: set[str] = set()  # every vpatch side must make the very same commits
        for r in range(args.repeats):
            for side in sides if r % 2 == 0 else sides[::-1]:
                ws = tmp / f"ws-{r}"
                sh("cp", "-a", str(base_clone), str(ws))
                t0 = 0.0
                if side.startswith("vpatch"):
                    sh("git", "-C", str(ws), "checkout", "-q", "-b", "vpatch/v0.28.0")
                    cache = vp_cache("vpcache-cold") if side.endswith("cold)") else warm_cache
                    t0 = time.perf_counter()
                    vp_apply(ws, cache, git_apply="git apply" in side)
                    heads.add(sh("git", "-C", str(ws), "rev-parse", "HEAD"))
                else:
                    t0 = time.perf_counter()
                    sh("git", "am", "-q", "-3", *[str(fork / "patches" / f"p{i:03d}.patch") for i in range(len(patches))],
                       cwd=ws, env={"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"})
                times[side].append(time.perf_counter() - t0)
                shutil.rmtree(ws)
        if len(heads) != 1:
            raise SystemExit(f"vpatch's sides made different commits: {sorted(heads)}")
        ma = statistics.median(times["git am -3"])
        print(f"patches: {len(patches)} onto vLLM {series.base} (8.5k files), {args.repeats} repeats, medians; "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'tool':<26}{'median s':>10}{'min s':>9}{'max s':>9}{'per entry ms':>14}{'ratio':>7}")
        for name, ts in times.items():
            print(f"{name:<26}{statistics.median(ts):>10.2f}{min(ts):>9.2f}{max(ts):>9.2f}"
                  f"{statistics.median(ts) / len(patches) * 1000:>14.0f}{statistics.median(ts) / ma:>7.2f}")
        print(f"every vpatch side made the same commits (HEAD {next(iter(heads))[:12]})")


if __name__ == "__main__":
    main()
