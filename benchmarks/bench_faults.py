"""Fault injection: SIGKILL vpatch at random points of apply, apply onto another base, rebase and refresh,
then `vpatch status` and `vpatch abort`, and check that nothing is lost or left half-done.

Run on demand:  python benchmarks/bench_faults.py [--trials 100] [--mode alone|group|both] [--seed S]

Two kill modes:
- ``alone``: SIGKILL to the vpatch process only; its git child (if any) runs on as an orphan;
- ``group``: SIGKILL to vpatch's whole process group: vpatch and its git children die together (this is
  what leaves ``.git/index.lock`` and friends behind).

Each trial copies a prepared fork + workspace (real git, a small project of 400 files, tags v1.0.0 and
v1.1.0, a series of 14 patch entries and an overlay), starts one of the four commands in its own process
group, kills it after a delay drawn uniformly up to the command's full duration (measured once per
scenario; from 0.8 × the time `vpatch --help` takes, as Python's start-up alone proves little), then runs ``status`` (must exit 0) and ``abort`` (exit 0, or 1 with "no vpatch operation is in
progress"). The trial is *recovered* when the workspace (branch, HEAD, refs, index, work tree including
untracked files, no git lock left) and ``patches/`` + ``overlay/`` equal either the state before the command
or the state a complete run produces, and no process of the killed command (an orphaned git child, one of
pycheck's forked workers) is alive 10 s after it. ``refresh`` keeps no operation record: each file it writes is atomic
and the same as a complete run writes, so its recovery is running ``refresh --all`` again (counted apart).

Prints, per scenario and mode: recovered / trials, how many kills landed while an operation was in flight,
and the failures' differences.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "GIT_AUTHOR_NAME": "Up", "GIT_AUTHOR_EMAIL": "up@x.invalid", "GIT_COMMITTER_NAME": "Up",
       "GIT_COMMITTER_EMAIL": "up@x.invalid", "GIT_AUTHOR_DATE": "2026-01-02T03:04:05+00:00",
       "GIT_COMMITTER_DATE": "2026-01-02T03:04:05+00:00", "COLUMNS": "200"}
VPATCH = [sys.executable, "-m", "vpatch.manager.cli.main"]
SCENARIOS = {
    "apply": ["apply"],
    "apply-base": ["apply", "--base", "v1.1.0"],
    "rebase": ["rebase", "--onto", "v1.1.0"],
    "refresh": ["refresh", "--all"],
}


def git(cwd: Path, *args: str, input: str | None = None, check: bool = True) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, env=ENV, input=input, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} in {cwd}: {r.stderr}")
    return r.stdout.strip()


def vp(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run vpatch to its end. Its output goes through files, not pipes, so that a process it leaves behind
    (a worker that never ends) cannot hold the benchmark up; one that is still alive 10 s after vpatch
    returned stops the benchmark with its name."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*VPATCH, *args], cwd=cwd, env=ENV, stdout=out, stderr=err, text=True,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(f"vpatch {' '.join(args)} in {cwd}: still running after 600 s") from None
        left = _left_behind(proc.pid)
        if left:
            raise SystemExit(f"vpatch {' '.join(args)} in {cwd} left processes behind: {left}")
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(proc.args, rc, out.read(), err.read())


def _text(i: int, tag: str = "") -> str:
    return "".join(f"line {k} of file {i}{tag}\n" for k in range(60))


def build_template(tmp: Path, n_files: int = 400, n_entries: int = 14) -> dict[str, Path]:
    """Upstream (v1.0.0, v1.1.0), a fork series, and per scenario a fork + workspace ready to run."""
    up = tmp / "upstream"
    (up / "pkg").mkdir(parents=True)
    git(up, "init", "-q", "-b", "main")
    git(up, "config", "gc.auto", "0")
    for i in range(n_files):
        (up / "pkg" / f"m{i:03d}.py").write_text(_text(i))
    git(up, "add", "-A")
    git(up, "commit", "-q", "-m", "release 1.0.0")
    git(up, "tag", "v1.0.0")
    patches = []
    for e in range(n_entries):
        for j in range(8):  # each entry edits 8 files
            i = (e * 8 + j) % n_files
            p = up / "pkg" / f"m{i:03d}.py"
            p.write_text(p.read_text().replace(f"line 30 of file {i}\n", f"line 30 of file {i} fork{e}\n"))
        git(up, "commit", "-q", "-am", f"entry {e}\n\nTPOT 15.2 -> 15.1 ms.")
        patches.append(git(up, "format-patch", "-1", "--stdout", "--zero-commit", "HEAD") + "\n")
    git(up, "reset", "-q", "--hard", "v1.0.0")
    for i in range(0, n_files, 7):  # v1.1.0 moves context in some files the entries touch (3-way needed)
        p = up / "pkg" / f"m{i:03d}.py"
        p.write_text("# upstream header\n" * 3 + p.read_text())
    (up / "pkg" / "new_in_110.py").write_text("new\n")
    git(up, "add", "-A")
    git(up, "commit", "-q", "-m", "release 1.1.0")
    git(up, "tag", "v1.1.0")

    fork = tmp / "fork"
    (fork / "patches").mkdir(parents=True)
    (fork / "overlay" / "ov" / "pkg" / "kern").mkdir(parents=True)
    (fork / "overlay" / "ov" / "pkg" / "kern" / "k.cu").write_text("// kernel\n" * 50)
    toml = [f'[series]\nname = "bench"\nbase = "v1.0.0"\nsource = "{up}"\n']
    for e, text in enumerate(patches):
        (fork / "patches" / f"e{e:02d}.patch").write_text(text)
        toml.append(f'[[entry]]\nid = "e{e:02d}"\ntitle = "entry {e}"\n')
        if e == n_entries // 2:
            toml.append('[[entry]]\nid = "ov"\nkind = "overlay"\ntitle = "overlay"\n')
    (fork / "patches" / "series.toml").write_text("\n".join(toml))
    git(fork, "init", "-q")
    templates = {}
    for name in SCENARIOS:
        t = tmp / f"tpl-{name}"
        shutil.copytree(fork, t, symlinks=True)
        upto = "e00" if name in ("apply", "apply-base") else None
        r = vp(t, "-q", "apply", *(["--upto", upto] if upto else []))
        if r.returncode != 0:
            raise SystemExit(f"template {name}: {r.stderr}")
        if name == "refresh":  # edit every entry's commit in the workspace: refresh rewrites every patch
            ws = t / ".vpatch" / "vllm"
            base = git(ws, "rev-parse", "refs/vpatch/base")
            git(ws, "-c", "core.editor=true", "rebase", "-q", "-x",
                "f=$(git diff-tree --no-commit-id --name-only -r HEAD | head -1) && echo '# edited' >> \"$f\" && "
                "git commit -q -a --amend --no-edit", base)
        templates[name] = t
    return templates


def snapshot(root: Path) -> dict:
    ws = root / ".vpatch" / "vllm"
    s: dict = {}
    if (ws / ".git").exists():
        s["branch"] = git(ws, "symbolic-ref", "-q", "HEAD", check=False)
        s["head"] = git(ws, "rev-parse", "HEAD", check=False)
        s["refs"] = "\n".join(line for line in git(ws, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
                              if not line.startswith("refs/vpatch/backup/"))
        s["index"] = hashlib.sha256(git(ws, "ls-files", "-s").encode()).hexdigest()[:16]
        s["status"] = git(ws, "status", "--porcelain", "--untracked-files=all")
        s["git_locks"] = sorted(str(p.relative_to(ws)) for p in (ws / ".git").rglob("*.lock"))
        s["files"] = _tree_hash(ws, skip=".git")
    s["series"] = _tree_hash(root / "patches") + _tree_hash(root / "overlay")
    return s


def _tree_hash(d: Path, skip: str | None = None) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d)
        if skip and rel.parts[0] == skip:
            continue
        if p.is_file() and not p.is_symlink():
            h.update(f"{rel}\0{p.stat().st_mode & 0o777:o}\0".encode() + p.read_bytes())
        elif p.is_symlink():
            h.update(f"{rel}\0link\0{os.readlink(p)}".encode())
    return h.hexdigest()[:16]


def diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _left_behind(sid: int, grace: float = 10.0) -> list[str]:
    """Processes of the killed command's session (its git children, pycheck's workers) still alive after
    ``grace`` seconds: each must end by itself once vpatch is gone."""
    deadline = time.monotonic() + grace
    while True:
        alive = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":  # session id; zombies are only not reaped yet
                    alive.append(f"{d} {stat.split('(', 1)[1].split(')', 1)[0]}")
            except (OSError, IndexError, ValueError):
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def trial(tpl: Path, work: Path, scenario: str, mode: str, delay: float, before: dict, complete: dict) -> dict:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(tpl, work, symlinks=True)
    proc = subprocess.Popen([*VPATCH, "-q", *SCENARIOS[scenario]], cwd=work, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    if mode == "group":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    op_file = work / ".vpatch" / "vllm" / ".git" / "vpatch" / "operation.json"
    in_flight = op_file.exists()
    st = vp(work, "status")
    ab = vp(work, "abort")
    ok_cmds = st.returncode == 0 and (ab.returncode == 0 or (ab.returncode == 1 and "no vpatch operation" in ab.stderr))
    left = _left_behind(proc.pid)
    after = snapshot(work)
    how = "before" if after == before else "complete" if after == complete else None
    if how is None and scenario == "refresh" and ok_cmds:
        again = vp(work, "refresh", "--all")
        after2 = snapshot(work)
        if again.returncode == 0 and after2 == complete:
            how = "complete after re-running refresh"
    return {"recovered": ok_cmds and how is not None and not left, "how": how, "left_behind": left, "in_flight": in_flight, "status_rc": st.returncode,
            "abort_rc": ab.returncode, "abort_err": ab.stderr.strip()[-300:], "status_err": st.stderr.strip()[-300:],
            "diff": diff(before, after)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100, help="trials per kill mode, spread over the 4 scenarios")
    ap.add_argument("--mode", choices=["alone", "group", "both"], default="both")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--jobs", type=int, default=1, help="trials run at once (each in its own copy)")
    args = ap.parse_args()
    run(args.trials, ["alone", "group"] if args.mode == "both" else [args.mode], args.scenarios.split(","), args.seed,
        jobs=args.jobs)


def run(trials: int, modes: list[str], scenarios: list[str], seed: int, n_files: int = 400, n_entries: int = 14,
        say=print, jobs: int = 1) -> dict:
    """Run ``trials`` per mode; return {mode: {scenario: [recovered, trials, in flight]}} (and print)."""
    _per.clear()
    _per.update({m: {} for m in modes})
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as t:
        tmp = Path(t)
        t0 = time.monotonic()
        tpls = build_template(tmp, n_files, n_entries)
        ref: dict = {}
        for name in scenarios:  # the state before, the complete state, and how long a full run takes
            work = tmp / "calib"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(tpls[name], work, symlinks=True)
            before = snapshot(work)
            s = time.monotonic()
            r = vp(work, "-q", *SCENARIOS[name])
            dur = time.monotonic() - s
            if r.returncode != 0:
                raise SystemExit(f"{name} does not complete: {r.stderr}")
            ref[name] = (before, snapshot(work), dur)
            if before == ref[name][1]:
                raise SystemExit(f"{name}: the complete run changed nothing, the benchmark would prove nothing")
        s = time.monotonic()
        vp(tmp, "--help")
        startup = (time.monotonic() - s) * 0.8  # kills before Python has started prove little: start near there
        say(f"setup {time.monotonic() - t0:.0f} s; kills between {startup:.2f} s and the full run: " + ", ".join(f"{n} {ref[n][2]:.2f} s" for n in scenarios))
        total = {m: [0, 0] for m in modes}
        hows: dict = {m: {} for m in modes}
        failures: list = []
        plan = []
        for mode in modes:
            for k in range(trials):
                name = scenarios[k % len(scenarios)]
                plan.append((mode, k, name, rng.uniform(startup, ref[name][2])))

        def one(item):
            mode, k, name, delay = item
            before, complete, _ = ref[name]
            work = tmp / f"work-{mode}-{k}"
            r = trial(tpls[name], work, name, mode, delay, before, complete)
            shutil.rmtree(work, ignore_errors=True)
            return item, r

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for (mode, _k, name, delay), r in pool.map(one, plan):
                total[mode][0] += r["recovered"]
                total[mode][1] += 1
                if not r["recovered"]:
                    failures.append(r)
                if not r["recovered"] or os.environ.get("BENCH_VERBOSE"):
                    say(f"{'ok ' if r['recovered'] else 'FAIL'} {mode:<5} {name:<10} kill at {delay:5.2f}s "
                        f"in_flight={r['in_flight']} how={r['how']} status={r['status_rc']} abort={r['abort_rc']} "
                        f"diff={r['diff']} left={r['left_behind']} {r['abort_err'][:200]!r} {r['status_err'][:200]!r}")
                st = _per[mode].setdefault(name, [0, 0, 0])
                st[0] += r["recovered"]
                st[1] += 1
                st[2] += r["in_flight"]
                hows[mode][str(r["how"])] = hows[mode].get(str(r["how"]), 0) + 1
        for mode in modes:
            for name, (ok, n, fl) in _per[mode].items():
                say(f"{mode:<6}{name:<11} recovered {ok}/{n}  (operation in flight after the kill: {fl})")
            say(f"{mode:<6}{'ALL':<11} recovered {total[mode][0]}/{total[mode][1]}  ("
                + ", ".join(f"{k}: {v}" for k, v in sorted(hows[mode].items())) + ")")
        say(f"wall {time.monotonic() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}")
    return {m: dict(v) for m, v in _per.items()}


_per: dict = {}

if __name__ == "__main__":
    main()
