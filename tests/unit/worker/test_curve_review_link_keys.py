"""A connected worker's link thread (``worker/link.py``) with CURVE keys that do not fit its controller, from a review
of remote workers: a --curve-server-key of another pair, or a forged pair (a listed public key with a secret key not
its own), broke every handshake and was logged as a network fault and then `check --controller`, never the ERROR
README promises; a worker given no --curve-secret-key was told the public half of that flag was not listed; and a
process refused under another worker's id logged a WARNING and took the id back at each of its reconnections.
Real sockets and keys; the link's methods are called here, with no thread and no worker process."""

from __future__ import annotations

import logging
import time

import pytest
import zmq
import zmq.auth

from warmserve import protocol as P
from warmserve.security import KEY_CLASH_MARK, curve_client, curve_server, uses_throwaway_key
from warmserve.worker.link import Link
from warmserve.worker.server import _HANDSHAKE_EVENTS


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _controller(ctx, tmp_path, listed=()):
    """A CURVE ROUTER on loopback letting in the ``listed`` public keys; returns (endpoint, its public key file, its
    authenticator, to stop). The socket is kept on the authenticator: collected, it would close."""
    zmq.auth.create_certificates(str(tmp_path), "server")
    (tmp_path / "workers").mkdir()
    pub, sec = zmq.auth.load_certificate(str(tmp_path / "server.key_secret"))
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    auth = curve_server(ctx, sock, pub, sec, str(tmp_path / "workers"), extra_keys=listed)
    sock.bind("tcp://127.0.0.1:0")
    auth.router = sock
    return sock.getsockopt_string(zmq.LAST_ENDPOINT), str(tmp_path / "server.key"), auth


def _link(ctx, endpoint, keys, curve=True) -> Link:
    """A worker's link towards ``endpoint``; ``keys(sock)`` sets its CURVE keys."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    keys(sock)
    monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
    sock.connect(endpoint)
    pipe = ctx.socket(zmq.PAIR)
    pipe.bind(f"inproc://pipe-{id(sock)}")
    return Link(sock, pipe, routed=False, endpoint=endpoint, hello=P.Hello(worker_id="w", device="cpu", pid=1),
                heartbeat_interval_s=1.0, peer_timeout_s=30.0, max_messages_per_drain=64, monitor=monitor,
                curve=curve)


def _watch_until(link: Link, caplog, what: str, timeout_s: float = 15.0) -> str:
    end = time.monotonic() + timeout_s
    while what not in caplog.text and time.monotonic() < end:
        if link.monitor.poll(100):
            link._watch()
    return caplog.text


def _pair(tmp_path, name):
    zmq.auth.create_certificates(str(tmp_path), name)
    return zmq.auth.load_certificate(str(tmp_path / f"{name}.key_secret"))


@pytest.mark.parametrize("case", ["another server key", "forged pair"])
def test_keys_that_break_every_handshake_are_an_error_naming_them(ctx, tmp_path, caplog, case):
    (tmp_path / "c").mkdir()
    worker_pub, worker_sec = _pair(tmp_path, "worker")
    endpoint, server_key, auth = _controller(ctx, tmp_path / "c", listed=[worker_pub])
    try:
        other_pub, other_sec = _pair(tmp_path, "other")
        server_pub = zmq.auth.load_certificate(server_key)[0]

        def keys(sock):
            # another server key: a pair not the controller's; forged: the listed public key, a secret not its pair
            sock.curve_serverkey = other_pub if case == "another server key" else server_pub
            sock.curve_publickey = worker_pub
            sock.curve_secretkey = worker_sec if case == "another server key" else other_sec

        link = _link(ctx, endpoint, keys)
        with caplog.at_level(logging.INFO, logger="warmserve.worker"):
            text = _watch_until(link, caplog, "refused this worker's key")
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, text
        assert "--curve-server-key" in errors[0] and "--curve-secret-key" in errors[0], errors
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="warmserve.worker"):
            link._warn_silent(time.monotonic() + 60)
        assert not caplog.records  # refused, logged: no `check --controller` on top
    finally:
        auth.stop()


def test_silence_with_curve_names_the_keys(ctx, caplog):
    link = _link(ctx, "tcp://127.0.0.1:35917", lambda sock: None)
    with caplog.at_level(logging.WARNING, logger="warmserve.worker"):
        link._warn_silent(time.monotonic() + 60)
    assert "check --controller" in caplog.text and "--curve-server-key" in caplog.text
    plain = _link(ctx, "tcp://127.0.0.1:35917", lambda sock: None, curve=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="warmserve.worker"):
        plain._warn_silent(time.monotonic() + 60)
    assert "check --controller" in caplog.text and "--curve" not in caplog.text


def test_a_throwaway_key_is_warned_at_start_and_its_refusal_names_no_flag_not_given(ctx, tmp_path, caplog):
    endpoint, server_key, auth = _controller(ctx, tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="warmserve.security"):
            link = _link(ctx, endpoint, lambda sock: curve_client(sock, server_key, None))
        assert "throwaway key pair" in caplog.text and "pass --curve-secret-key" in caplog.text
        assert uses_throwaway_key(link.sock)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="warmserve.worker"):
            text = _watch_until(link, caplog, "refused this worker's key")
        assert "no --curve-secret-key" in text and "throwaway" in text, text
        assert "public half of --curve-secret-key" not in text
    finally:
        auth.stop()


def test_a_worker_refused_under_another_keys_id_says_so_and_stops_taking_the_id(ctx, caplog, monkeypatch):
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    link = _link(ctx, endpoint, lambda sock: None, curve=False)
    link.sock.send(b"hi")
    assert router.poll(5000)
    ident = router.recv_multipart()[0]
    why = f"refused worker id 'w' from CURVE key B: that id {KEY_CLASH_MARK} A, another worker's"
    router.send_multipart([ident, P.encode(P.Refused(reason=why))])
    assert link.sock.poll(5000)
    with caplog.at_level(logging.INFO, logger="warmserve.worker"):
        link._from_network()
        link._from_network()
        connects = []
        monkeypatch.setattr(link, "_connect_again", connects.append)
        link._beat(time.monotonic() + 120)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "own --worker-id" in errors[0] and "no longer connects anew" in errors[0], errors
    assert not connects, "it connected anew, taking the id back from the worker that owns it"
    assert "check --controller" not in caplog.text


def test_a_send_to_a_controller_gone_says_what_that_means(ctx, caplog):
    """Found in review: a worker whose controller stopped logged only "cannot send to the controller at ...
    (Resource temporarily unavailable)", where README said it logs that the controller is silent."""
    def immediate(sock):
        sock.setsockopt(zmq.IMMEDIATE, 1)  # as the worker's socket: nothing queued without a connection

    link = _link(ctx, "tcp://127.0.0.1:35918", immediate, curve=False)
    link.controller_heard = True
    with caplog.at_level(logging.WARNING, logger="warmserve.worker"):
        assert not link._send_out(b"controller", b"x")
    assert "cannot send to the controller" in caplog.text and "it stopped" in caplog.text, caplog.text
    assert "saying Hello each heartbeat" in caplog.text
