"""Where a measurement ran: the host fingerprint and the tool versions stored with every sample.

Probing the machine (nvidia-smi, rocm-smi, /proc/cpuinfo) lives here, at the edge; the store only records
what it is given.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path

from .store import StoreError


def _run(argv: list[str], timeout: float = 20) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpus() -> tuple[list[str], str | None, str | None]:
    """(GPU names, driver version, ROCm version) from nvidia-smi / rocm-smi / /opt/rocm; empty on a CPU box."""
    names: list[str] = []
    driver: str | None = None
    rocm: str | None = None
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if out:
        for line in out.strip().splitlines():
            name, _, drv = line.partition(",")
            names.append(name.strip())
            driver = drv.strip() or driver
    out = _run(["rocm-smi", "--showproductname", "--json"])
    if out:
        try:
            for card in json.loads(out).values():
                if isinstance(card, dict):
                    n = card.get("Card Series") or card.get("Card series") or card.get("Card SKU") or card.get("GFX Version")
                    gfx = card.get("GFX Version")
                    names.append(" ".join(x for x in (n, f"({gfx})" if gfx and gfx != n else None) if x))
        except (ValueError, AttributeError):
            pass
        drv_json = _run(["rocm-smi", "--showdriverversion", "--json"])
        if drv_json:
            try:
                for v in json.loads(drv_json).values():
                    if isinstance(v, dict):
                        driver = next(iter(v.values()), driver)
            except (ValueError, AttributeError, StopIteration):
                pass
    for p in (Path("/opt/rocm/.info/version"), Path("/opt/rocm/.info/version-dev")):
        try:
            rocm = p.read_text().strip()
            break
        except OSError:
            continue
    if driver is None:
        try:
            m = re.search(r"Kernel Module\s+([\d.]+)", Path("/proc/driver/nvidia/version").read_text())
            driver = m.group(1) if m else None
        except OSError:
            pass
    return names, driver, rocm


@functools.lru_cache(maxsize=1)
def _host_fingerprint() -> str:
    return json.dumps(_probe_host(), sort_keys=True)


def host_fingerprint() -> dict:
    """This machine's fingerprint (probed once per process)."""
    return json.loads(_host_fingerprint())


def _probe_host() -> dict:
    """Where a measurement ran: GPU names, driver and ROCm versions, CPU model, hostname, kernel.

    Works on a CPU-only machine (``gpus`` is then empty).  The ``id`` is a sha256 of the rest, so the
    same machine in the same state always gets the same id; a driver update gives a new one.
    """
    names, driver, rocm = _gpus()
    fp = {
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count() or 0,
        "gpus": names,
        "driver": driver,
        "rocm": rocm,
        "kernel": platform.release(),
        "machine": platform.machine(),
    }
    fp["id"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return fp


_VERSIONS_SCRIPT = r"""
import json, importlib.metadata as md
out = {}
for dist in ("vllm", "torch", "lm_eval"):
    try:
        out[dist] = md.version(dist if dist != "lm_eval" else "lm_eval")
    except Exception:
        out[dist] = None
print(json.dumps(out))
"""


def tool_versions(python: str | Path | None = None) -> dict[str, str | None]:
    """Versions of vllm, torch and lm-eval as installed for ``python`` (default: this interpreter).

    Read with importlib.metadata (no heavy imports), in a subprocess when another interpreter is named.
    """
    import sys

    if python is None or Path(python) == Path(sys.executable):
        exec_ns: dict = {}
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(_VERSIONS_SCRIPT, exec_ns)  # noqa: S102 - our own constant
        return json.loads(buf.getvalue())
    try:
        r = subprocess.run([str(python), "-c", _VERSIONS_SCRIPT], capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise StoreError(f"cannot read tool versions with {python}: {e}", "check that the interpreter runs") from None
