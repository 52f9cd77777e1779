"""Build work over a walk of every prefix of the series (what a bisect does): vpatch's reuse vs from scratch.

One run, two builds, printed as counts and time:

* ``empty`` (the python-only vLLM build): ``vpatch build --target empty --upto P`` for every prefix P in
  order, against the naive loop ``git checkout P && VLLM_TARGET_DEVICE=empty pip install -e .`` in one
  ready venv (the baseline is spared venv and torch creation; vpatch's first build pays for them and is
  reported apart).
* the gfx11 kernel build (``--check-kernels``: HIP device code with Debian's hipcc, Triton AOT for
  gfx1100/gfx1151): ``vpatch build --check-kernels --upto P`` (reuses a check whose kernel sources hash
  equal) against compiling every prefix's kernels.

    VPATCH_CACHE=/tmp/vpatch-cache-build python benchmarks/bench_build.py [--series patches/series.toml]
        [--work DIR] [--skip-empty] [--skip-kernels] [--json OUT]

The series (patches/ and overlay/) is copied into --work (default: a tmp dir), applied onto its base from
its source, and every prefix is built there; nothing of the repository is written.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def vpatch(root: Path, *args: str, timeout: int = 3600) -> dict:
    r = subprocess.run([sys.executable, "-m", "vpatch.manager.cli.main", "--json", *args], cwd=root, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode not in (0, 6):
        raise SystemExit(f"vpatch {' '.join(args)} failed ({r.returncode}): {r.stderr[-3000:]}")
    return json.loads(r.stdout)


def prefixes(root: Path) -> list[tuple[str, str]]:
    from vpatch.manager.workspace import Workspace

    ws = Workspace(root / ".vpatch" / "vllm")
    return [("base", ws.base_commit())] + [(c.entry_id or c.sha[:10], c.sha) for c in ws.applied()]


def walk_empty(root: Path, pre: list[tuple[str, str]]) -> dict:
    rows = []
    t0 = time.monotonic()
    for name, _sha in pre:
        t = time.monotonic()
        d = vpatch(root, "build", "--target", "empty", "--upto", name)
        rec = d["record"]
        rows.append({"prefix": name, "action": rec["action"], "s": round(time.monotonic() - t, 1),
                     "installs": 1 if rec["action"] in ("full", "reinstall") else 0})
        print(f"  vpatch  {name:28} {rec['action']:11} {rows[-1]['s']:7.1f}s", flush=True)
    total = time.monotonic() - t0
    first = rows[0]["s"]
    return {"rows": rows, "total_s": round(total, 1), "first_s": first, "after_first_s": round(total - first, 1),
            "installs": sum(r["installs"] for r in rows), "builds": len(rows),
            "slot": rec["slot"], "python": rec["python"]}


def naive_empty(root: Path, pre: list[tuple[str, str]], python: str, work: Path) -> dict:
    """`git checkout P && pip install -e .` for every prefix, in the (already made) venv."""
    ws = root / ".vpatch" / "vllm"
    tree = work / "naive-tree"
    subprocess.run(["git", "-C", str(ws), "worktree", "add", "--detach", "--force", str(tree), pre[0][1]],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    from vpatch.manager.runtime_env import workspace_vllm_version

    version = workspace_vllm_version(ws)
    env.update(VLLM_TARGET_DEVICE="empty", PIP_DISABLE_PIP_VERSION_CHECK="1", SETUPTOOLS_SCM_PRETEND_VERSION=version,
               SETUPTOOLS_SCM_PRETEND_VERSION_FOR_VLLM=version)
    cons = Path(python).parent.parent / "constraints.txt"
    rows = []
    t0 = time.monotonic()
    for name, sha in pre:
        t = time.monotonic()
        subprocess.run(["git", "-C", str(tree), "checkout", "--force", "--detach", "-q", sha], check=True)
        r = subprocess.run([python, "-m", "pip", "install", "-q", *(["-c", str(cons)] if cons.exists() else []),
                            "-e", str(tree), "--no-build-isolation"], cwd=tree, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"naive install of {name} failed: {r.stderr[-2000:]}")
        subprocess.run(["git", "-C", str(tree), "checkout", "--force", "-q", "HEAD", "--", "."], check=True)
        rows.append({"prefix": name, "s": round(time.monotonic() - t, 1)})
        print(f"  naive   {name:28} pip -e      {rows[-1]['s']:7.1f}s", flush=True)
    return {"rows": rows, "total_s": round(time.monotonic() - t0, 1), "installs": len(rows), "builds": len(rows)}


def walk_kernels(root: Path, pre: list[tuple[str, str]], reuse: bool) -> dict:
    from vpatch.manager import build as b
    from vpatch.manager.config import load_build_config
    from vpatch.manager.context import Context
    from vpatch.manager.git import Git

    ctx = Context(series_path=root / "patches" / "series.toml")
    g = Git(root / ".vpatch" / "vllm")
    cfg = load_build_config(ctx.config_path)
    rows = []
    t0 = time.monotonic()
    for name, sha in pre:
        t = time.monotonic()
        k = b.check_kernels_for(ctx, g, sha, cfg, reuse=reuse)
        units = sum(1 for x in k.get("builds", []) if x["status"] in ("ok", "failed")) if k["action"] == "compile" else 0
        status = {}
        for x in k.get("builds", []):
            status[x["status"]] = status.get(x["status"], 0) + 1
        rows.append({"prefix": name, "action": k["action"], "compiled_units": units, "s": round(time.monotonic() - t, 1),
                     "status": status})
        print(f"  {'vpatch' if reuse else 'scratch':7} {name:28} {k['action']:8} {units:3} units {rows[-1]['s']:7.1f}s "
              f"{status}", flush=True)
    return {"rows": rows, "total_s": round(time.monotonic() - t0, 1),
            "compiles": sum(1 for r in rows if r["action"] == "compile"),
            "compiled_units": sum(r["compiled_units"] for r in rows), "builds": len(rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=Path, default=REPO / "patches" / "series.toml")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--skip-empty", action="store_true")
    ap.add_argument("--skip-kernels", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="vpatch-bench-build-"))
    root = work / "fork"
    if not (root / ".vpatch" / "vllm").exists():
        root.mkdir(parents=True, exist_ok=True)
        src_root = a.series.resolve().parent.parent
        for d in ("patches", "overlay"):
            if (src_root / d).exists():
                shutil.copytree(src_root / d, root / d, dirs_exist_ok=True)
        if a.series.resolve().parent.name != "patches":
            shutil.copy(a.series, root / "patches" / "series.toml")
        print(f"applying the series in {root} ...", flush=True)
        vpatch(root, "apply")
    pre = prefixes(root)
    print(f"{len(pre)} prefixes: {', '.join(n for n, _ in pre)}", flush=True)
    out: dict = {"prefixes": [n for n, _ in pre], "work": str(work)}

    if not a.skip_empty:
        print("\n== target empty (python-only vLLM build) ==", flush=True)
        v = walk_empty(root, pre)
        n = naive_empty(root, pre, v["python"], work)
        out["empty"] = {"vpatch": v, "scratch": n}
    if not a.skip_kernels:
        print("\n== gfx11 kernel build (--check-kernels) ==", flush=True)
        kv = walk_kernels(root, pre, reuse=True)
        ks = walk_kernels(root, pre, reuse=False)
        out["kernels"] = {"vpatch": kv, "scratch": ks}

    print("\n== summary (one run) ==")
    if "empty" in out:
        v, n = out["empty"]["vpatch"], out["empty"]["scratch"]
        print(f"empty   vpatch : {v['builds']} prefixes, {v['installs']} pip installs, 0 compiled units, "
              f"{v['total_s']:.1f}s ({v['first_s']:.1f}s first build incl. venv+torch, {v['after_first_s']:.1f}s for the "
              f"other {v['builds'] - 1})")
        print(f"empty   scratch: {n['builds']} prefixes, {n['installs']} pip installs, {n['total_s']:.1f}s "
              f"(venv+torch made beforehand, not counted)")
        print(f"empty   ratio  : walk after the first build {v['after_first_s']:.1f}s vs {n['total_s']:.1f}s "
              f"= {n['total_s'] / max(v['after_first_s'], 0.1):.0f}x less time, "
              f"{v['installs']} vs {n['installs']} installs")
    if "kernels" in out:
        kv, ks = out["kernels"]["vpatch"], out["kernels"]["scratch"]
        print(f"kernels vpatch : {kv['compiles']} of {kv['builds']} prefixes compiled, {kv['compiled_units']} "
              f"(kernel, arch) units, {kv['total_s']:.1f}s")
        print(f"kernels scratch: {ks['compiles']} of {ks['builds']} prefixes compiled, {ks['compiled_units']} "
              f"(kernel, arch) units, {ks['total_s']:.1f}s")
        print(f"kernels ratio  : {ks['compiled_units'] / max(kv['compiled_units'], 1):.2f}x the units, "
              f"{ks['total_s'] / max(kv['total_s'], 0.1):.2f}x the time from scratch")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
