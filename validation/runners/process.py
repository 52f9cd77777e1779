"""Processes the runners start: argv lists only, own process group, bounded waits, clean stops.

:class:`Server` starts a long-lived server (``vllm serve``, or a test stand-in), polls ``/health`` until
it answers 200 or the readiness timeout passes (or the process dies), and stops it: SIGTERM to the
whole process group, then SIGKILL after a grace period.  Its output goes to a log file whose tail is
quoted in every error.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vpatch.manager.children import dies_with_vpatch
from vpatch.manager.errors import VpatchError


class RunnerError(VpatchError):
    """A measurement could not be taken (process failed, timed out, or wrote output we cannot read)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path | None, n: int = 25) -> str:
    if path is None:
        return ""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def merged_env(extra: Mapping[str, str] | None = None, *, drop: Sequence[str] = ()) -> dict[str, str]:
    env = dict(os.environ)
    for k in drop:
        env.pop(k, None)
    env.update(extra or {})
    return env


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError("argv must be a non-empty list of strings (never a shell string)")
    return list(argv)


def run_logged(
    argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None,
    timeout: float | None = None, what: str = "command",
) -> subprocess.CompletedProcess:
    """Run ``argv`` to completion, stdout+stderr to ``log``; on failure raise with the log's tail."""
    argv = _check_argv(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        p = subprocess.Popen(dies_with_vpatch(argv), stdout=f, stderr=subprocess.STDOUT,
                             env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(p)
            raise RunnerError(f"{what} ran past {timeout:.0f} s and was stopped:\n{log_tail(log)}",
                              f"see {log}; raise the timeout if it is just slow") from None
        except BaseException:
            stop_group(p)
            raise
    if rc != 0:
        raise RunnerError(f"{what} failed (exit {rc}):\n{log_tail(log)}", f"full output: {log}")
    return subprocess.CompletedProcess(argv, rc)


def stop_group(p: subprocess.Popen, grace: float = 20.0) -> int | None:
    """SIGTERM the process group of ``p``, wait ``grace`` s, then SIGKILL it.  Returns the exit code."""
    if p.poll() is not None:
        _kill_leftovers(p.pid)
        return p.returncode
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return p.wait(timeout=30)
    finally:
        _kill_leftovers(p.pid)


def _kill_leftovers(pgid: int) -> None:
    """Children that outlived the leader (e.g. vLLM's engine core) still carry its group id."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_cpu_seconds(pgid: int) -> float | None:
    """CPU seconds (user + system, with reaped children's) used so far by the live processes of group ``pgid``,
    read from /proc; None where there is no /proc (not Linux). A server's work in CPU time does not grow when
    other jobs crowd the machine, as its wall-clock latencies do."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        # after "pid (comm)": state ppid pgrp session ... utime(14) stime(15) cutime(16) cstime(17), 1-based
        if int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15])
    return total / tick


def http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - 127.0.0.1 URLs we built
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Server:
    """A server process started from ``argv`` that listens on ``host:port``.

    ``with Server(...) as s:`` starts it and waits until ``GET {base_url}/health`` answers 200;
    leaving the block stops it (process group, TERM then KILL).
    """

    argv: Sequence[str]
    port: int
    log: Path
    host: str = "127.0.0.1"
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    readiness_timeout_s: float = 2700.0
    health_path: str = "/health"
    poll_interval_s: float = 0.5
    stop_grace_s: float = 20.0
    proc: subprocess.Popen | None = field(default=None, init=False)
    ready_after_s: float | None = field(default=None, init=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Server:
        argv = _check_argv(self.argv)
        if http_ok(self.base_url + self.health_path, timeout=1):
            raise RunnerError(f"something already answers on {self.base_url}", "stop it, or use another port")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "wb")
        try:
            self.proc = subprocess.Popen(dies_with_vpatch(argv), stdout=self._logf, stderr=subprocess.STDOUT,
                                         env=dict(self.env) if self.env is not None else None,
                                         cwd=self.cwd, start_new_session=True)
        except OSError as e:
            self._logf.close()
            raise RunnerError(f"cannot start {argv[0]}: {e.strerror or e}") from None
        return self

    def wait_ready(self) -> float:
        """Block until /health answers 200; returns the seconds it took.  Raises (and stops) otherwise."""
        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        url = self.base_url + self.health_path
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.stop()
                raise RunnerError(f"server exited (code {rc}) before it was ready:\n{log_tail(self.log)}",
                                  f"full output: {self.log}")
            if http_ok(url, timeout=min(5.0, self.poll_interval_s * 4)):
                self.ready_after_s = time.monotonic() - t0
                return self.ready_after_s
            if time.monotonic() - t0 > self.readiness_timeout_s:
                self.stop()
                raise RunnerError(
                    f"server not ready after {self.readiness_timeout_s:.0f} s ({url}):\n{log_tail(self.log)}",
                    f"full output: {self.log}; raise [validate] readiness_timeout_s if loading is just slow",
                )
            time.sleep(self.poll_interval_s)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        try:
            return stop_group(self.proc, self.stop_grace_s)
        finally:
            if not self._logf.closed:
                self._logf.close()

    def __enter__(self) -> Server:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def split_command(cmd: str | Sequence[str], placeholders: Mapping[str, str] | None = None) -> list[str]:
    """``cmd`` as an argv list: ``shlex.split`` a string (never a shell), then fill ``{name}`` placeholders
    in each word, so a substituted path with spaces stays one argument.  Unknown placeholders are errors."""
    import shlex
    import string

    if isinstance(cmd, str):
        try:
            words = shlex.split(cmd)
        except ValueError as e:
            raise RunnerError(f"cannot split command {cmd!r}: {e}", "check its quotes") from None
    else:
        words = list(cmd)
    if not words:
        raise RunnerError("empty command")
    ph = dict(placeholders or {})
    out = []
    for w in words:
        if "{" not in w and "}" not in w:
            out.append(w)
            continue
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(w) if f is not None}
        except ValueError as e:
            raise RunnerError(f"command {cmd!r}: bad braces in {w!r}: {e}", "write {{ and }} for literal braces") from None
        missing = sorted(n for n in names if n not in ph)
        if missing:
            known = ", ".join("{" + k + "}" for k in sorted(ph)) or "none"
            raise RunnerError(f"command {cmd!r} uses unknown placeholder(s) {', '.join('{' + m + '}' for m in missing)}",
                              f"known: {known}; write {{{{ and }}}} for literal braces")
        out.append(w.format_map(ph))
    return out
