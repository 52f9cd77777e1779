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


HOLDER = textwrap.dedent("""
    # what `vpatch validate` does while a boot runs, in a process of its own: the CLI's SIGTERM handling,
    # then a server (the oracle, healthy) held open until something stops this process
    import sys, time
    from vpatch.manager.errors import raise_on_sigterm
    from vpatch.validation.runners.process import Server
    from vpatch.validation.tinymodel import oracle_argv
    raise_on_sigterm()
    port, out = int(sys.argv[1]), sys.argv[2]
    try:
        with Server(oracle_argv(sys.executable, port), port=port, log=__import__("pathlib").Path(out + ".log"),
                    readiness_timeout_s=60, poll_interval_s=0.1, stop_grace_s=5) as s:
            open(out, "w").write(str(s.proc.pid))
            time.sleep(600)
    except KeyboardInterrupt as e:
        print("unwound:", type(e).__name__)
        sys.exit(143)
""")


def test_sigterm_to_vpatch_stops_the_server_it_started(tmp_path):
    """A CI job's timeout or `kill` sends SIGTERM: the vllm serve a boot started must not be left running."""
    import signal
    import subprocess

    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    port, pidfile = free_port(), tmp_path / "server.pid"
    p = subprocess.Popen([sys.executable, str(script), str(port), str(pidfile)], stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not pidfile.exists() and time.monotonic() - t0 < 60 and p.poll() is None:
        time.sleep(0.05)
    assert pidfile.exists(), "the server never became healthy"
    server = int(pidfile.read_text())
    assert alive(server) and http_ok(f"http://127.0.0.1:{port}/health")
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 143 and "unwound: Terminated" in out
    assert not alive(server), "vpatch died on SIGTERM and left its server running"
    assert not http_ok(f"http://127.0.0.1:{port}/health", timeout=1)


def test_the_cli_turns_sigterm_into_exit_143_with_one_line(tmp_path):
    import signal
    import subprocess

    # `vpatch init` waits on nothing; a python that sleeps inside the CLI's error handler stands in for a long verb
    code = ("import sys, time; from vpatch.manager.cli import main as m; from vpatch.manager.cli import _common as c\n"
            "orig = c.run_command\n"
            "def slow(ctx, fn, *a, **k):\n"
            "    def body(ctx, *a2, **k2):\n"
            "        print('ready', flush=True); time.sleep(600)\n"
            "    return orig(ctx, body, *a, **k)\n"
            "c.run_command = slow\n"
            "import vpatch.manager.cli.status as st; st.run_command = slow\n"
            "m.main(['status'])\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err and "internal error" not in err


def test_group_cpu_seconds_counts_the_work_of_a_process_group_not_its_wall_time(tmp_path):
    import subprocess

    from vpatch.validation.runners.process import group_cpu_seconds, stop_group

    busy = ("import os, sys, time\n"
            "kid = os.fork()\n"  # a child in the same group, like vLLM's engine core beside its API server
            "t0 = time.process_time()\n"
            "while time.process_time() - t0 < 0.6: pass\n"
            "open(sys.argv[1] + str(os.getpid()), 'w').write('done')\n"
            "time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", busy, str(tmp_path / "done-")], start_new_session=True)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        t0 = time.monotonic()
        while len(list(tmp_path.glob("done-*"))) < 2 and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        busy_s, idle_s = group_cpu_seconds(p.pid), group_cpu_seconds(idle.pid)
        assert busy_s is not None and 1.1 < busy_s < 3.0, busy_s  # two processes x 0.6 s of CPU, plus start-up
        assert idle_s is not None and idle_s < 0.5, idle_s
    finally:
        stop_group(p, grace=1)
        stop_group(idle, grace=1)


@pytest.mark.parametrize("how", ["server", "run_logged"])
def test_a_process_vpatch_started_ends_when_vpatch_is_killed(tmp_path, how):
    """kill -9 of vpatch (or a second SIGTERM, which ends it at once) never runs the code that stops its
    servers: the kernel must stop them (PR_SET_PDEATHSIG), or a `vllm serve` keeps a GPU's memory."""
    import signal
    import subprocess

    port = free_port()
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from vpatch.validation.runners.process import Server, run_logged
        from vpatch.validation.tinymodel import oracle_argv
        if {how!r} == "server":
            s = Server(oracle_argv(sys.executable, {port}), port={port}, log=Path({str(tmp_path / 's.log')!r}),
                       readiness_timeout_s=60, poll_interval_s=0.1).__enter__()
            Path({str(pidfile)!r}).write_text(str(s.proc.pid))
        else:
            run_logged([sys.executable, "-c", "import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"],
                       log=Path({str(tmp_path / 'r.log')!r}))
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    t0 = time.monotonic()
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() - t0 < 60 and parent.poll() is None:
        time.sleep(0.05)
    assert pidfile.exists(), "the process never started"
    child = int(pidfile.read_text())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t0 = time.monotonic()
    while alive(child) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail(f"{how}: pid {child} outlived the vpatch that started it")
    if how == "server":
        assert not http_ok(f"http://127.0.0.1:{port}/health", timeout=1)
