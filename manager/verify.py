"""`vpatch verify`: prove that each entry applied in the workspace still takes effect.

An entry's ``checks`` are commands (``{python} {series_dir}/checks/x.py``) that test the entry's
*effect* on the workspace's vLLM -- a gather count, an order chosen, a call count -- not its text.
They run in the workspace's python-only runtime (:mod:`runtime_env`; made once per workspace,
reused after), or in any python given with ``--python`` (e.g. a ROCm build's venv on a GPU box).

Which entries are applied is read from the workspace itself: the ``Vpatch-Entry`` trailers of the
commits between ``refs/vpatch/base`` and ``HEAD``.  Per entry the result is

- ``pass``    -- every check exited 0;
- ``fail``    -- a check exited non-zero or ran past the timeout (its last output lines are kept);
- ``skipped`` -- the entry has no checks, or is not applied here (merged upstream at or before the
  workspace's base, skipped by ``apply``, or simply not applied), with the reason.

Placeholders in a check: ``{python}`` (the runtime's interpreter), ``{series_dir}`` (the folder of
series.toml), ``{workspace}``.  The command is split with shlex *before* substitution, so paths with
spaces stay one argument; it runs with argv (no shell), cwd = the workspace, the entry's gate
variables set, and ``VPATCH_ENTRY`` / ``VPATCH_WORKSPACE`` / ``VPATCH_SERIES_DIR`` in its environment.
Full output goes to ``<state_dir>/logs/verify/<entry>.log``.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import git as gitpython

from . import output
from .context import Context
from .errors import VpatchError, WorkspaceError
from .series import Entry, Series, merged_at_or_before

ENTRY_TRAILER = "Vpatch-Entry"
BASE_REF = "refs/vpatch/base"
DEFAULT_TIMEOUT_S = 900
TAIL_LINES = 30


@dataclass
class CheckRun:
    command: str
    argv: list[str]
    rc: int | None
    seconds: float
    timed_out: bool = False
    output_tail: list[str] = field(default_factory=list)
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


@dataclass
class EntryResult:
    id: str
    result: str  # pass | fail | skipped
    reason: str = ""
    commit: str | None = None
    checks: list[CheckRun] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        return d


# --- the workspace's applied stack (GitPython) -----------------------------------------------
def applied_entries(workspace: Path) -> list[tuple[str, str]]:
    """(commit, entry id) of each entry commit on the current branch since the base, oldest first."""
    try:
        repo = gitpython.Repo(workspace)
    except (gitpython.NoSuchPathError, gitpython.InvalidGitRepositoryError):
        raise WorkspaceError(f"no workspace at {workspace}",
                             "run `vpatch apply` to create it (or pass --workspace DIR)") from None
    try:
        repo.git.rev_parse("--verify", "-q", f"{BASE_REF}^{{commit}}")
    except gitpython.GitCommandError:
        raise WorkspaceError(f"{workspace} has no {BASE_REF}: it is not a vpatch workspace",
                             "create it with `vpatch apply`, or point --workspace at one") from None
    out = repo.git.log("--reverse", "--first-parent",
                       f"--format=%H%x00%(trailers:key={ENTRY_TRAILER},valueonly,separator=%x2C)%x1e",
                       f"{BASE_REF}..HEAD")
    result = []
    for rec in out.split("\x1e"):
        rec = rec.strip("\n")
        if not rec:
            continue
        sha, ids = rec.split("\x00", 1)
        for eid in (i.strip() for i in ids.split(",")):
            if eid:
                result.append((sha, eid))
    return result


def workspace_base(ctx: Context, series: Series) -> str:
    """The base the workspace's branch was made from (branch vpatch/<base>), else the series' base."""
    try:
        from .workspace import Workspace

        info = Workspace(ctx.workspace).branch_info()
        if info and info.get("base"):
            return info["base"]
    except Exception:
        pass
    try:
        branch = gitpython.Repo(ctx.workspace).active_branch.name
        if branch.startswith("vpatch/"):
            return branch.split("/", 1)[1]
    except Exception:
        pass
    return series.base


def _skip_reasons(ctx: Context) -> dict[str, str]:
    try:
        from .workspace import Workspace

        ws = Workspace(ctx.workspace)
        branch = ws.git.head_branch()
        return ws.skipped(branch) if branch else {}
    except Exception:
        return {}


def not_applied_reason(entry: Entry, base: str, skipped: dict[str, str]) -> str:
    if merged_at_or_before(entry, base):
        return f"not applied: merged upstream in {entry.upstream.version} (workspace base {base})"
    if entry.id in skipped:
        return f"not applied: skipped by apply ({skipped[entry.id]})"
    return f"not applied in the workspace (base {base})"


# --- running one check -------------------------------------------------------------------------
def check_argv(command: str, *, python: Path | str, series_dir: Path, workspace: Path) -> list[str]:
    """shlex-split, then substitute the placeholders inside each argument (never through a shell)."""
    try:
        parts = shlex.split(command)
    except ValueError as e:
        raise VpatchError(f"check command {command!r} cannot be parsed: {e}",
                          "fix the entry's `checks` in series.toml (shell quoting rules)") from None
    subs = {"{python}": str(python), "{series_dir}": str(series_dir), "{workspace}": str(workspace)}
    out = []
    for p in parts:
        for k, v in subs.items():
            p = p.replace(k, v)
        out.append(p)
    return out


def run_check(argv: list[str], *, cwd: Path, env: dict, timeout_s: float, log_path: Path | None,
              command: str = "") -> CheckRun:
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    started = time.monotonic()
    timed_out = False
    rc: int | None
    log = open(log_path, "w", encoding="utf-8") if log_path else None
    try:
        if log:
            log.write(f"$ {shlex.join(argv)}\n")
        try:
            from .children import dies_with_vpatch

            proc = subprocess.Popen(dies_with_vpatch(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
                                    start_new_session=True)
        except OSError as e:
            return CheckRun(command, argv, None, 0.0, False, [f"cannot run {argv[0]}: {e}"],
                            str(log_path) if log_path else None)
        import threading

        def pump():
            assert proc.stdout is not None
            for line in proc.stdout:
                if log:
                    log.write(line)
                tail.append(line.rstrip("\n"))

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.wait()
        t.join(timeout=5)
        if log:
            log.write(f"[exit {rc}{', timed out' if timed_out else ''}, {time.monotonic() - started:.1f}s]\n")
    finally:
        if log:
            log.close()
    lines = [ln for ln in tail if ln.strip()]
    return CheckRun(command, argv, rc, round(time.monotonic() - started, 2), timed_out, lines,
                    str(log_path) if log_path else None)


def _kill_group(proc: subprocess.Popen) -> None:
    """End the check and whatever it started (it runs in its own session/process group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def check_env(entry: Entry, ctx: Context, python: Path | str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(entry.gate)
    env.update({"VPATCH_ENTRY": entry.id, "VPATCH_WORKSPACE": str(ctx.workspace),
                "VPATCH_SERIES_DIR": str(ctx.patches_dir), "PYTHONUNBUFFERED": "1"})
    bindir = str(Path(python).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


# --- the command body ---------------------------------------------------------------------------
def verify(ctx: Context, series: Series, ids: tuple[str, ...] = (), *, python: str | None = None,
           venv: Path | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Run the applied entries' checks, holding the workspace lock so no apply changes the tree meanwhile."""
    from .workspace import Workspace

    w = Workspace(ctx.workspace)
    if not w.exists():
        return _verify(ctx, series, ids, python=python, venv=venv, timeout_s=timeout_s)  # says what is missing
    with w.lock():
        return _verify(ctx, series, ids, python=python, venv=venv, timeout_s=timeout_s)


def _verify(ctx: Context, series: Series, ids: tuple[str, ...] = (), *, python: str | None = None,
            venv: Path | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    ws = ctx.workspace
    applied = applied_entries(ws)
    applied_ids = {eid: sha for sha, eid in applied}
    base = workspace_base(ctx, series)
    skipped = _skip_reasons(ctx)
    selected = [series.get(i) for i in ids] if ids else list(series.entries)
    results: list[EntryResult] = []
    to_run: list[Entry] = []
    for e in selected:
        if e.id not in applied_ids:
            results.append(EntryResult(e.id, "skipped", not_applied_reason(e, base, skipped)))
        elif not e.checks:
            results.append(EntryResult(e.id, "skipped", "no checks", applied_ids[e.id]))
        else:
            results.append(EntryResult(e.id, "pending", "", applied_ids[e.id]))
            to_run.append(e)
    known = set(series.ids())
    extra = [eid for _, eid in applied if eid not in known]

    runtime: dict = {}
    dirty = _dirty(ws)
    if to_run:
        cpu = None if python or venv or dirty else _cpu_build(ctx, ws)
        if python:
            py: Path | str = python
            origin = require_tree_python(python, ws, check_env(to_run[0], ctx, python), "the workspace")
            runtime = {"python": python, "kind": "given", "vllm": origin}
        elif cpu:  # `vpatch build --target cpu` of this very tree exists: run in that engine, no second venv
            py = cpu["python"]
            runtime = {"python": py, "kind": "cpu", "tree": cpu["tree"],
                       "vllm_version": (cpu.get("fingerprint") or {}).get("vllm")}
        else:
            from . import runtime_env

            vdir = Path(venv) if venv else runtime_env.default_venv_dir(ctx.state_dir, ws)
            py = runtime_env.ensure_runtime(ws, vdir)
            runtime = {"python": str(py), "kind": "python-only", **runtime_env.runtime_summary(vdir)}
        log_dir = ctx.log_dir() / "verify"
        log_dir.mkdir(parents=True, exist_ok=True)
        n_checks = sum(len(e.checks) for e in to_run)
        by_id = {r.id: r for r in results}
        with output.progress("verifying entries", total=n_checks) as step:
            for e in to_run:
                r = by_id[e.id]
                env = check_env(e, ctx, py)
                for i, cmd in enumerate(e.checks):
                    step.detail(e.id)
                    argv = check_argv(cmd, python=py, series_dir=ctx.patches_dir, workspace=ws)
                    suffix = f"-{i + 1}" if len(e.checks) > 1 else ""
                    run = run_check(argv, cwd=ws, env=env, timeout_s=timeout_s,
                                    log_path=log_dir / f"{e.id}{suffix}.log", command=cmd)
                    r.checks.append(run)
                    step.advance(1)
                failed = [c for c in r.checks if not c.ok]
                if failed:
                    c = failed[0]
                    why = (f"timed out after {timeout_s:.0f}s" if c.timed_out
                           else f"exit {c.rc}" if c.rc is not None else "could not start")
                    r.result, r.reason = "fail", f"{len(failed)} of {len(r.checks)} check(s) failed ({why})"
                else:
                    r.result = "pass"
                    r.reason = f"{len(r.checks)} check(s) passed in {sum(c.seconds for c in r.checks):.1f}s"
    counts = {k: sum(1 for r in results if r.result == k) for k in ("pass", "fail", "skipped")}
    return {
        "workspace": str(ws), "base": base, "runtime": runtime,
        "entries": [r.as_dict() for r in results], "counts": counts,
        "not_in_series": extra, "dirty": dirty,
    }


def workspace_runtime(ctx: Context) -> dict | None:
    """The python to run effect checks with when none is given, as ``vpatch verify`` picks it: the ``cpu``
    build of the workspace's HEAD tree where one exists (vLLM's CPU engine; no second venv), else the
    workspace's python-only runtime (:mod:`runtime_env`; made once if missing). None without a vLLM
    workspace. ``{"python", "describe"}``."""
    from . import runtime_env

    ws = ctx.workspace
    if not (Path(ws) / "vllm").is_dir() or not (Path(ws) / "setup.py").is_file():
        return None
    cpu = _cpu_build(ctx, ws)
    if cpu:
        version = (cpu.get("fingerprint") or {}).get("vllm") or "vLLM"
        return {"python": str(cpu["python"]),
                "describe": f"the workspace's cpu build ({version}, tree {str(cpu.get('tree', '?'))[:12]})"}
    vdir = runtime_env.default_venv_dir(ctx.state_dir, ws)
    py = runtime_env.ensure_runtime(ws, vdir)
    return {"python": str(py), "describe": f"the workspace's python-only runtime {vdir}"}


# --- which vllm a python imports -----------------------------------------------------------------
_PROBE = "import importlib.util as u\ns = u.find_spec('vllm')\nprint((s.origin or (list(s.submodule_search_locations or [''])[0])) if s else '')\n"


def vllm_origin(python: Path | str, env: dict) -> str | None:
    """Where ``import vllm`` resolves for ``python`` run as a check runs (a script, ``env``), or None."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vpatch-probe-") as tmp:
        script = Path(tmp) / "probe.py"
        script.write_text(_PROBE)
        try:
            p = subprocess.run([str(python), str(script)], env=env, cwd=tmp, capture_output=True, text=True,
                               timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise VpatchError(f"cannot run --python {python}: {e}", "pass the path of a python interpreter") from None
    if p.returncode != 0:
        raise VpatchError(f"--python {python} cannot look up vllm: {(p.stderr.strip().splitlines() or ['?'])[-1]}",
                          "pass the python of an environment with vLLM's dependencies")
    return p.stdout.strip() or None


def require_tree_python(python: Path | str, tree: Path, env: dict, what: str) -> str | None:
    """Refuse ``python`` when ``vllm`` does not resolve inside ``tree`` (its checks would test another vLLM).
    A tree without a ``vllm/`` package (not a vLLM tree) sets no requirement. Returns where vllm resolves."""
    tree = Path(tree).resolve()
    origin = vllm_origin(python, env)
    if not (tree / "vllm").is_dir():
        return origin
    inside = origin is not None and Path(origin).resolve().is_relative_to(tree)
    if not inside:
        where = f"imports vllm from {Path(origin).parent}" if origin else "cannot import vllm"
        raise VpatchError(f"--python {python} {where}, not from {what} ({tree}): its checks would test another vLLM",
                          f"omit --python to use the workspace's own runtime, or install this tree into that "
                          f"environment (`{python} -m pip install -e {tree} --no-deps`)")
    return origin


# --- checks on a tree that is not checked out (``vpatch check --onto REF --checks``) ----------------
def verify_tree(ctx: Context, series: Series, repo: Path, tree: str, ids: list[str], python: Path | str,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, list[dict]]:
    """Run the checks of ``ids`` on ``tree`` (in ``repo``): its ``vllm/`` is unpacked in a temporary folder
    put first on ``PYTHONPATH`` of ``python`` (the workspace's runtime, for vLLM's dependencies). A check
    exits 0 (``pass``: the effect is there), 1 (``fail``: it is not) or anything else (``error``: could not
    run). Returns {entry id: [{check, rc, result, seconds, output}]}."""
    import tempfile

    from .git import Git

    results: dict[str, list[dict]] = {}
    log_dir = ctx.log_dir() / "check"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vpatch-moved-") as tmp:
        arch = Git(repo).run_bytes("archive", tree, "vllm")
        subprocess.run(["tar", "-x", "-C", tmp], input=arch, check=True)
        for eid in ids:
            e = series.get(eid)
            env = {**check_env(e, ctx, python), "PYTHONPATH": tmp, "VPATCH_WORKSPACE": tmp}
            if not results:  # once: the moved tree must be what `import vllm` finds
                require_tree_python(python, Path(tmp), env, "the moved tree")
            rows = []
            for i, cmd in enumerate(e.checks):
                argv = check_argv(cmd, python=python, series_dir=ctx.patches_dir, workspace=Path(tmp))
                suffix = f"-{i + 1}" if len(e.checks) > 1 else ""
                run = run_check(argv, cwd=Path(tmp), env=env, timeout_s=timeout_s,
                                log_path=log_dir / f"{eid}{suffix}.log", command=cmd)
                result = "pass" if run.ok else "fail" if run.rc == 1 else "error"
                rows.append({"check": cmd, "rc": run.rc, "result": result, "seconds": run.seconds,
                             "timed_out": run.timed_out, "output": "\n".join(run.output_tail[-12:]),
                             "log": run.log})
            results[eid] = rows
    return results


def _cpu_build(ctx: Context, ws: Path) -> dict | None:
    """The cpu build (manager/cpu_engine.py) of the workspace's HEAD tree, if one was made."""
    from . import build_records, cpu_engine
    from .git import Git

    return cpu_engine.tree_runtime(build_records.builds_dir(ctx), Git(ws).tree_of("HEAD"))


def _dirty(ws: Path) -> bool:
    try:
        return gitpython.Repo(ws).is_dirty(untracked_files=True)
    except Exception:
        return False
