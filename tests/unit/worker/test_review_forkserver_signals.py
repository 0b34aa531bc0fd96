"""The fork server (worker/forkserver.py) under a SIGCHLD its launcher ignored, a spawner with descriptors past
1,023, and its own exit (killed, or idle): found in review, it crashed at its first child's exit, the controller's
poll of a forked worker raised for good, and an exited server stayed a zombie.

The servers here preload nothing and fork children that run an unknown `warmserve` command (argparse's exit 2, no
torch): a ``sitecustomize`` on their PYTHONPATH sets the server's module constants, and the launcher's SIGCHLD."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import types

import pytest

from proc_state import process_state, wait_for

from warmserve.worker import forkserver

SITECUSTOMIZE = """
import os, signal
if os.environ.get("WS_TEST_SIGCHLD") == "ignore":  # as inherited across exec from a launcher that set SIG_IGN
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
import warmserve.worker.forkserver as f
f.PRELOAD = ()
f.IDLE_EXIT_S = float(os.environ.get("WS_TEST_IDLE_EXIT_S", "120"))
"""


@pytest.fixture
def light_server(tmp_path):
    """Start ForkServers (not this process's shared one) that preload nothing; all stopped and reaped after."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    servers: list[forkserver.ForkServer] = []

    def start(**env_extra: str) -> forkserver.ForkServer:
        env = dict(os.environ, **env_extra)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH", "")) if p)
        server = forkserver.ForkServer(env)
        servers.append(server)
        assert server.wait_ready(30), "the light fork server did not start"
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(10)


def _spawn_failing(server: forkserver.ForkServer) -> forkserver.ForkedProcess:
    with open(os.devnull, "wb") as null:
        return server.spawn(["no-such-command"], env=dict(os.environ), stdout=null.fileno(), stderr=null.fileno())


def test_a_server_started_with_sigchld_ignored_reports_its_childrens_exits_and_lives_on(light_server):
    server = light_server(WS_TEST_SIGCHLD="ignore")
    first = _spawn_failing(server)
    # Before: the kernel reaped the child itself, the server's waitpid raised ChildProcessError and it died (255).
    assert first.wait(20) == 2
    assert server.proc.poll() is None and not server.gone
    assert _spawn_failing(server).wait(20) == 2  # and it forks on


def test_a_child_reaped_by_someone_else_is_reported_as_status_unknown():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped here: the server's waitpid would get ECHILD
    assert forkserver._reap(proc.pid) == forkserver.STATUS_UNKNOWN


def test_poll_of_a_forked_process_with_a_pidfd_past_1023_reads_it_once_the_server_is_gone(fds_past_1023):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        low = os.pidfd_open(proc.pid)
        pidfd = fcntl.fcntl(low, fcntl.F_DUPFD_CLOEXEC, 1100)  # as with over 1,024 client connections open
        os.close(low)
        assert pidfd >= 1024
        gone_server = types.SimpleNamespace(changed=threading.Condition(), gone=True)
        child = forkserver.ForkedProcess(gone_server, proc.pid, pidfd)
        # Before: ValueError "filedescriptor out of range in select()", on every heartbeat.
        assert child.poll() is None
        proc.kill()
        proc.wait()
        assert child.wait(5) == forkserver.STATUS_UNKNOWN
        child.kill()  # ended: nothing happens, as with Popen
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_fork_server_is_reaped(light_server):
    server = light_server()
    pid = server.proc.pid
    os.kill(pid, signal.SIGKILL)  # the OOM killer
    assert wait_for(lambda: server.gone)
    # Before: a zombie ("Z") for as long as this process lived.
    assert wait_for(lambda: process_state(pid) == "reaped", 5), process_state(pid)
    assert server.proc.returncode == -signal.SIGKILL


def test_a_fork_server_that_idles_out_is_reaped(light_server):
    server = light_server(WS_TEST_IDLE_EXIT_S="0.3")
    pid = server.proc.pid
    # Generous limits: it failed once beside other suites on the 2-core VM (-n 2), passing alone; each wait ends as
    # soon as its condition holds, so only a real hang costs them.
    assert wait_for(lambda: server.gone, 30)
    assert server.idle_exit
    assert wait_for(lambda: process_state(pid) == "reaped", 30), process_state(pid)
    assert server.proc.returncode == 0
