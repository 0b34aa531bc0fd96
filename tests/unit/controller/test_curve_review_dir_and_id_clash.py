"""The controller's --curve-dir and its worker ids under CURVE, from a review of remote workers: a workers/ folder
missing or empty while remote workers were expected (a silent wait for workers no key lets in), a stale
DIR/server.key that nothing noticed and the start-up hint handed out, and a second process under a worker's id with
another allowed key: one WARNING, the clashing process never told, and the real worker shut out for as long as the
other ran (it took the id back a second after each of the real one's reconnections). Real sockets and keys."""

from __future__ import annotations

import asyncio
import logging

import pytest
import zmq
import zmq.auth

import warmserve
from warmserve import protocol as P
from warmserve.controller import hub_sockets as H
from warmserve.controller.workers import WorkerHub
from warmserve.errors import InvalidArgumentError
from warmserve.security import KEY_CLASH_MARK

from controller_harness import demo_path
from test_security_review_hub import _admitting_hub, _dealer, _hello, _keys, _until


def _hub_warnings(d, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=None, curve_dir=str(d)).close()
    return caplog.text


def test_no_worker_keys_is_warned_at_start_and_refused_when_remote_workers_are_expected(tmp_path, caplog):
    d = _keys(tmp_path)
    assert "holds no *.key file: no remote worker can join" in _hub_warnings(d, caplog)
    with pytest.raises(InvalidArgumentError, match="2 remote worker.s. expected, but .*holds no"):
        H.remote_curve_hint(str(d), str(d / "server.key"), 2)
    (d / "workers").rmdir()
    assert "workers does not exist: no remote worker can join" in _hub_warnings(d, caplog)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        H.remote_curve_hint(str(d), str(d / "server.key"), 1)
    with pytest.raises(InvalidArgumentError, match="1 remote worker.s. expected"):  # at start, not after the wait
        warmserve.Cluster(demo_path(), cpu_workers=0, remote_workers=1, curve_dir=str(d), start_timeout_s=300)


def test_a_stale_server_key_is_warned_and_not_handed_out(tmp_path, caplog):
    d = _keys(tmp_path, "w", listed=("w",))
    public = zmq.auth.load_certificate(str(d / "server.key_secret"))[0]
    assert "server.key" not in _hub_warnings(d, caplog)  # the right pair: no word
    hint = H.remote_curve_hint(str(d), str(d / "server.key"), 1)
    assert f"--curve-server-key {d / 'server.key'} " in hint
    right = tmp_path / "right.key"  # the public key the hub writes from server.key_secret (WorkerHub.local_curve)
    right.write_bytes((d / "server.key").read_bytes())
    zmq.auth.create_certificates(str(tmp_path), "old")
    (d / "server.key").write_bytes((tmp_path / "old.key").read_bytes())  # a public key of another pair
    text = _hub_warnings(d, caplog)
    assert "server.key holds public key" in text and public.decode() in text and "refused" in text
    hint = H.remote_curve_hint(str(d), str(right), 1)
    assert f"{d / 'server.key'} " not in hint and "SERVER.key" in hint and public.decode() in hint, hint


def test_key_clashes_are_logged_again_while_they_last_and_the_sender_is_told(caplog):
    sent = []

    class Sock:
        def send_multipart(self, frames, flags=0):
            sent.append(frames)

    clashes = H.KeyClashes()
    hello = P.Hello(worker_id="w1", device="cpu", pid=1)
    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        for t in (0.0, 1.0, 2.0, H.KEY_CLASH_LOG_EVERY_S + 0.5):
            clashes.refuse(Sock(), b"w1", "KEYB", "KEYA", hello, now_s=t)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "1 message(s) refused since" in lines[0] and "3 message(s) refused since" in lines[1]
    assert len(sent) == 4 and all(f[0] == b"w1" for f in sent)
    reason = P.refused_reason(sent[0][1])
    assert KEY_CLASH_MARK in reason and "KEYA" in reason and "--worker-id" in reason


def test_the_clashing_key_is_told_and_the_real_worker_takes_its_id_back(tmp_path):
    d = _keys(tmp_path, "a", "b", listed=("a", "b"))
    server_public = zmq.auth.load_certificate(str(d / "server.key"))[0]
    hellos, lost = [], []
    rid = b"w1"

    async def main():
        hub = _admitting_hub(d, hellos, lost)
        task = asyncio.ensure_future(hub.recv_loop())
        ctx = zmq.Context()
        socks = [_dealer(ctx, hub.endpoint, rid, tmp_path / "a.key_secret", server_public)]
        try:
            socks[0].send(_hello(rid, 4242))
            assert await _until(lambda: hellos == [4242])
            socks.append(_dealer(ctx, hub.endpoint, rid, tmp_path / "b.key_secret", server_public))
            socks[1].send(_hello(rid, 9999))
            assert await _until(lambda: socks[1].poll(0))
            reason = P.refused_reason(socks[1].recv())
            assert reason is not None and KEY_CLASH_MARK in reason, reason
            # The real worker connects anew (its --peer-timeout-s); the other, told, does not: the id is its again.
            socks.append(_dealer(ctx, hub.endpoint, rid, tmp_path / "a.key_secret", server_public))
            socks[2].send(_hello(rid, 4242))
            assert await _until(lambda: hellos == [4242, 4242]), "the real worker was not taken back"
        finally:
            task.cancel()
            for s in socks:
                s.close()
            ctx.term()
            hub.close()

    asyncio.run(main())
