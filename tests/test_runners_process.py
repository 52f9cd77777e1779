"""Server lifecycle and subprocess handling, with real processes on 127.0.0.1."""
from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from vpatch.validation.runners.process import (
    RunnerError,
    Server,
    free_port,
    http_ok,
    run_logged,
    split_command,
)
from vpatch.validation.tinymodel import oracle_argv


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_server_waits_for_health_then_stops_cleanly(tmp_path):
    port = free_port()
    srv = Server(oracle_argv(sys.executable, port, ready_delay_s=1.0), port=port, log=tmp_path / "srv.log",
                 readiness_timeout_s=30, poll_interval_s=0.1)
    with srv:
        # /health answered 503 for the first second: the wait covered it
        assert srv.ready_after_s >= 1.0
        assert http_ok(srv.base_url + "/health")
        pid = srv.proc.pid
    assert srv.proc.returncode is not None and not alive(pid)
    assert not http_ok(f"http://127.0.0.1:{port}/health", timeout=1)
    assert "oracle stopped" in (tmp_path / "srv.log").read_text()  # SIGTERM: a clean shutdown


STUBBORN = textwrap.dedent("""
    import os, signal, subprocess, sys, time, http.server, threading
    signal.signal(signal.SIGTERM, signal.SIG_IGN)          # ignores TERM: must be KILLed
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[2], "w").write(str(child.pid))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def test_stop_escalates_to_kill_and_takes_the_whole_process_group(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    port = free_port()
    pidfile = tmp_path / "child.pid"
    srv = Server([sys.executable, str(script), str(port), str(pidfile)], port=port, log=tmp_path / "s.log",
                 readiness_timeout_s=30, poll_interval_s=0.1, stop_grace_s=1.0)
    with srv:
        child = int(pidfile.read_text())
        assert alive(child)
    t0 = time.monotonic()
    while alive(child) and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert not alive(child), "the server's child (think: vLLM's engine core) outlived the stop"
    assert srv.proc.returncode == -9


def test_server_that_dies_during_startup_reports_its_log(tmp_path):
    port = free_port()
    argv = [sys.executable, "-c", "import sys; print('CUDA out of memory while loading'); sys.exit(3)"]
    with pytest.raises(RunnerError, match="(?s)exited \\(code 3\\).*out of memory"):
        with Server(argv, port=port, log=tmp_path / "s.log", readiness_timeout_s=30, poll_interval_s=0.1):
            pass


def test_readiness_timeout_stops_the_server(tmp_path):
    port = free_port()
    srv = Server(oracle_argv(sys.executable, port, ready_delay_s=60), port=port, log=tmp_path / "s.log",
                 readiness_timeout_s=1.0, poll_interval_s=0.1)
    with pytest.raises(RunnerError, match="not ready after 1 s") as ei:
        with srv:
            pass
    assert "readiness_timeout_s" in ei.value.hint
    assert srv.proc.returncode is not None


def test_argv_only_and_timeouts_for_run_logged(tmp_path):
    with pytest.raises(TypeError):
        run_logged("echo hi", log=tmp_path / "l")
    with pytest.raises(RunnerError, match="exit 4"):
        run_logged([sys.executable, "-c", "print('boom'); raise SystemExit(4)"], log=tmp_path / "l")
    assert "boom" in (tmp_path / "l").read_text()
    t0 = time.monotonic()
    with pytest.raises(RunnerError, match="ran past"):
        run_logged([sys.executable, "-c", "import time; time.sleep(30)"], log=tmp_path / "l2", timeout=0.5)
    assert time.monotonic() - t0 < 10


def test_split_command_fills_placeholders_per_word_and_never_uses_a_shell():
    assert split_command("{python} '{series_dir}/checks/a b.py' --x 1; rm -rf /",
                         {"python": "/v env/bin/python", "series_dir": "/s d"}) == [
        "/v env/bin/python", "/s d/checks/a b.py", "--x", "1;", "rm", "-rf", "/"]
    with pytest.raises(RunnerError, match="unknown placeholder.*workspace"):
        split_command("{workspace}/x", {"python": "p"})
    assert split_command("echo '{{literal}}'") == ["echo", "{literal}"]
    with pytest.raises(RunnerError, match="cannot split"):
        split_command("echo 'unterminated")
