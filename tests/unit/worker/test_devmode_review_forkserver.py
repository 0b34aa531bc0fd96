"""The fork server's socket pair closed by both ends as the server goes (worker/forkserver.py): found by a review
that ran `warmserve serve` under PYTHONDEVMODE=1, whose every shutdown wrote "ResourceWarning: unclosed
<socket.socket ... type=5>" from the server's process to the controller's stderr, and whose spawner kept the
socket of each server gone idle (or killed) open until that ``ForkServer`` was collected, with the same warning.

The servers here preload nothing (a ``sitecustomize`` on their PYTHONPATH, as in test_review_forkserver_signals.py)
and exit idle after 0.3 s: each test takes about a second."""

from __future__ import annotations

import gc
import os
import textwrap
import threading
import time
import warnings
import weakref

import pytest

from warmserve.worker import forkserver

SITECUSTOMIZE = """
import warmserve.worker.forkserver as f
f.PRELOAD = ()
f.IDLE_EXIT_S = 0.3
"""


@pytest.fixture
def idle_server(tmp_path):
    """A ForkServer (not this process's shared one) under Python's development mode that exits once idle."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = dict(os.environ, PYTHONDEVMODE="1", PYTHONWARNINGS="always")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH", "")) if p)
    # The reader thread, found before the server can end (Thread drops its target once run)
    before = set(threading.enumerate())
    # The server inherits this process's fd 2 as it starts: a file of the test's for that moment, read afterwards
    # whichever capture pytest has on fd 2 (capfd, set up after this fixture, missed what the server wrote)
    stderr_path = tmp_path / "server-stderr"
    with open(stderr_path, "wb") as stderr:
        saved = os.dup(2)
        os.dup2(stderr.fileno(), 2)
        try:
            server = forkserver.ForkServer(env)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    reader = next(t for t in set(threading.enumerate()) - before if t.name == "warmserve-forkserver")
    server.stderr_path = stderr_path
    # Held in a list that a test may empty: the fixture's frame then keeps no reference, and the object is collected
    held = [server]
    del server
    try:
        yield held, reader
    finally:
        for server in held:
            if server.proc.poll() is None:
                server.proc.kill()
            server.proc.wait(10)


def _gone(server: forkserver.ForkServer, timeout_s: float = 30.0) -> None:
    with server.changed:
        assert server.changed.wait_for(lambda: server.gone, timeout_s), "the idle fork server did not exit"
    assert server.idle_exit, "the server ended otherwise than idle"


def test_the_server_process_closes_its_socket_as_it_exits(idle_server):
    (server,), _ = idle_server
    assert server.wait_ready(30), "the light fork server did not start"
    _gone(server)
    assert server.proc.wait(10) == 0
    err = server.stderr_path.read_text()
    assert "ResourceWarning" not in err, err


def test_the_spawner_closes_its_end_once_the_server_has_gone(idle_server):
    held, reader = idle_server
    server = held.pop()
    assert server.wait_ready(30), "the light fork server did not start"
    _gone(server)
    # closed before ``gone`` is set: not left for the collector
    assert server._sock.fileno() == -1
    reader.join(forkserver.REAP_WAIT_S + 5)
    assert not reader.is_alive()
    collected = []
    weakref.finalize(server, collected.append, True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        del server
        gc.collect()
    assert collected, "the ForkServer was not collected: the check below would see nothing"
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks


def test_a_spawn_after_the_server_went_fails_as_an_os_error(idle_server):
    """What a spawn that raced the server's exit gets (popen_worker then starts a fresh interpreter): an OSError,
    as a send to a peer that has exited raised before the socket was closed, not a hang or a crash."""
    (server,), _ = idle_server
    assert server.wait_ready(30), "the light fork server did not start"
    _gone(server)
    started_s = time.monotonic()
    with open(os.devnull, "wb") as null, pytest.raises(OSError):
        server.spawn(["no-such-command"], env=dict(os.environ), stdout=null.fileno(), stderr=null.fileno())
    assert time.monotonic() - started_s < forkserver.SPAWN_REPLY_TIMEOUT_S
