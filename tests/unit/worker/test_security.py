"""A worker bound to an address other hosts can reach takes orders (Prewarm, Evict, Shutdown) from whoever
connects: it refuses such a bind without CURVE unless told --insecure, and with CURVE only listed clients get in.
The same rule (warmserve.security) is what the controller's worker socket needs."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest
import zmq
import zmq.auth

from warmserve import protocol as P
from warmserve.security import InsecureBindError, is_loopback, require_authenticated_bind
from warmserve.worker.core import WorkerCore
from warmserve.worker.main import build_pool
from warmserve.worker.server import WorkerServer


@pytest.mark.parametrize("endpoint,local", [
    ("tcp://127.0.0.1:0", True), ("tcp://127.3.4.5:5555", True), ("tcp://localhost:1", True),
    ("tcp://[::1]:7", True), ("ipc:///tmp/w.sock", True), ("inproc://x", True),
    ("tcp://0.0.0.0:0", False), ("tcp://*:5555", False), ("tcp://[::]:1", False), ("tcp://10.0.0.7:1", False),
    ("tcp://eth0:5555", False), ("tcp://myhost.example:1", False), ("ws://127.0.0.1:1", False),
    ("pgm://eth0;239.1.1.1:5555", False),
])
def test_which_endpoints_only_this_host_can_reach(endpoint, local):
    assert is_loopback(endpoint) is local


def test_the_rule_refuses_names_the_fix_and_warns_when_overridden(caplog):
    with pytest.raises(InsecureBindError, match="--insecure") as ei:
        require_authenticated_bind("tcp://*:9", authenticated=False, insecure=False, who="x", fix="pass --keys")
    assert ei.value.endpoint == "tcp://*:9" and "pass --keys" in str(ei.value) and "127.0.0.1" in str(ei.value)
    require_authenticated_bind("tcp://*:9", authenticated=True, insecure=False, who="x", fix="")
    require_authenticated_bind("tcp://127.0.0.1:9", authenticated=False, insecure=False, who="x", fix="")
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="warmserve.security"):
        require_authenticated_bind("tcp://*:9", authenticated=False, insecure=True, who="x", fix="")
    assert "no authentication" in caplog.text


def test_the_worker_command_refuses_an_open_bind_before_starting():
    """`warmserve worker --bind tcp://0.0.0.0:0` with no keys exits at once with the typed error and the fix
    (before this check it served any peer: here it would run until the timeout)."""
    r = subprocess.run([sys.executable, "-m", "warmserve", "worker", "--bind", "tcp://0.0.0.0:0", "--memory-gib",
                        "0.01", "--threads", "1", "--exit-with-parent"],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert "InsecureBindError" in r.stderr and "--curve-clients-dir" in r.stderr and "--insecure" in r.stderr
    assert "serving at" not in r.stderr


@pytest.fixture
def pool():
    with build_pool("cpu", 0.01) as p:
        yield p


def _serve(server: WorkerServer) -> tuple[threading.Thread, list]:
    """Run the worker's engine loop in a thread; an exception it raises is kept for the test's thread."""
    failures: list = []

    def run():
        try:
            server.serve_forever()
        except BaseException as e:  # reaches the test through `failures`
            failures.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, failures


def _dealer(ctx, endpoint: str, keys=None, server_public=None):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        s.curve_publickey, s.curve_secretkey = keys
        s.curve_serverkey = server_public
    s.connect(endpoint.replace("0.0.0.0", "127.0.0.1"))
    return s


def _send(sock, msg) -> bool:
    """Send without waiting; False when the socket holds no connection to queue it on (a refused handshake)."""
    try:
        sock.send(P.encode(msg), zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def _ask_stats(sock, id: int, timeout_s: float):
    _send(sock, P.GetStats(id=id))
    while sock.poll(int(timeout_s * 1000)):
        m = P.decode_reply(sock.recv())
        if isinstance(m, P.Stats) and m.id == id:
            return m
    return None


def test_a_worker_server_refuses_an_open_bind_unless_insecure(pool, caplog):
    core = WorkerCore(pool, device="cpu", worker_id="w-open", emit=lambda peer, msg: None)
    with pytest.raises(InsecureBindError, match="--curve-clients-dir"):
        WorkerServer(core, bind="tcp://0.0.0.0:0")
    with caplog.at_level(logging.WARNING, logger="warmserve.security"):
        server = WorkerServer(core, bind="tcp://0.0.0.0:0", insecure=True)
    assert "no authentication" in caplog.text
    t, failures = _serve(server)
    ctx = zmq.Context()
    try:
        c = _dealer(ctx, server.endpoint)
        assert _ask_stats(c, 1, 10.0).worker_id == "w-open"  # told --insecure: it serves anyone
        assert _send(c, P.Shutdown(id=2))
        t.join(10)
        assert not t.is_alive() and not failures
    finally:
        ctx.destroy(linger=0)


def test_with_curve_only_listed_clients_get_in(pool, tmp_path):
    keys = tmp_path / "keys"
    allowed = tmp_path / "clients"
    keys.mkdir()
    allowed.mkdir()
    _, worker_secret = zmq.auth.create_certificates(str(keys), "worker")
    zmq.auth.create_certificates(str(allowed), "client")
    _, stranger_secret = zmq.auth.create_certificates(str(keys), "stranger")
    core = WorkerCore(pool, device="cpu", worker_id="w-curve", emit=lambda peer, msg: None)
    server = WorkerServer(core, bind="tcp://0.0.0.0:0", curve_secret_key=worker_secret,
                          curve_clients_dir=str(allowed))
    t, failures = _serve(server)
    server_public, _ = zmq.auth.load_certificate(worker_secret)
    ctx = zmq.Context()
    try:
        plain = _dealer(ctx, server.endpoint)
        stranger = _dealer(ctx, server.endpoint, zmq.auth.load_certificate(stranger_secret), server_public)
        client = _dealer(ctx, server.endpoint, zmq.auth.load_certificate(str(allowed / "client.key_secret")),
                         server_public)
        assert _ask_stats(client, 1, 10.0).worker_id == "w-curve"
        assert _ask_stats(plain, 2, 1.0) is None  # no handshake: nothing reaches the worker
        assert _ask_stats(stranger, 3, 1.0) is None  # a key not in the directory: refused by ZAP
        _send(stranger, P.Shutdown(id=4))
        t.join(1.0)
        assert t.is_alive(), "a Shutdown from an unknown key stopped the worker"
        assert _send(client, P.Shutdown(id=5))
        t.join(10)
        assert not t.is_alive() and not failures
    finally:
        ctx.destroy(linger=0)
        if t.is_alive():
            core.stopping = True
            t.join(10)


@pytest.mark.parametrize("argv,match", [
    (["--controller", "tcp://10.0.0.1:5", "--curve-clients-dir", "d"], "--curve-clients-dir is for --bind"),
    (["--bind", "tcp://127.0.0.1:0", "--curve-server-key", "k"], "--curve-server-key is for --controller"),
    (["--bind", "tcp://*:5", "--curve-clients-dir", "d"], "needs --curve-secret-key"),
    (["--bind", "tcp://*:5"], "--insecure"),
])
def test_curve_options_that_do_not_fit_the_mode_are_refused(argv, match):
    import argparse

    from warmserve import errors
    from warmserve.worker.main import add_arguments, check_security

    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(errors.InvalidArgumentError, match=match):
        check_security(p.parse_args(argv))
    check_security(p.parse_args(argv[:2] + ["--insecure"]))  # the same place, told --insecure: accepted


def test_curve_server_that_fails_stops_its_authenticator_thread(tmp_path):
    """A socket that cannot take the keys (here: closed) fails curve_server, and the authenticator thread it
    started does not outlive the call (found in review: nobody was left to stop it)."""
    from warmserve.security import curve_server

    public, secret = zmq.curve_keypair()
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        sock.close()
        before = threading.active_count()
        with pytest.raises(zmq.ZMQError):
            curve_server(ctx, sock, public, secret, str(tmp_path))
        assert threading.active_count() == before
    finally:
        ctx.destroy(linger=0)  # a leaked authenticator still holds a socket: term() would wait for it
