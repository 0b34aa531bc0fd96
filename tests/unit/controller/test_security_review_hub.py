"""The controller's worker socket (WorkerHub) and its CURVE keys, from a security review: no limit on a message's
size, key files that crashed or silently locked every worker out, a stale DIR/server.key handed to the local
workers, secret keys readable by all, refusals said nowhere, and one worker's id taken over by another's key.
Real sockets and real keys; no worker process."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time

import pytest
import zmq
import zmq.auth

from warmserve import protocol as P
from warmserve.controller import workers as W
from warmserve.controller.workers import WorkerHub, WorkerRecord
from warmserve.errors import InvalidArgumentError, WorkerLostError


def _keys(tmp_path, *clients, listed=()):
    """A --curve-dir with the server's pair (0600) and the clients' pairs beside it; ``listed`` in DIR/workers."""
    d = tmp_path / "keys"
    (d / "workers").mkdir(parents=True)
    zmq.auth.create_certificates(str(d), "server")
    os.chmod(d / "server.key_secret", 0o600)
    for c in clients:
        zmq.auth.create_certificates(str(tmp_path), c)
        os.chmod(tmp_path / f"{c}.key_secret", 0o600)
    for c in listed:
        (d / "workers" / f"{c}.key").write_bytes((tmp_path / f"{c}.key").read_bytes())
    return d


def _dealer(ctx, endpoint, rid: bytes, secret_file, server_public):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, rid)
    if secret_file is not None:
        pub, sec = zmq.auth.load_certificate(str(secret_file))
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_public, pub, sec
    s.connect(endpoint)
    return s


def _hello(rid: bytes, pid: int) -> bytes:
    return P.encode(P.Hello(worker_id=rid.decode(), device="cpu", pid=pid, capacity_bytes=1 << 30,
                            page_bytes=2 << 20, protocol_version=P.PROTOCOL_VERSION))


def _refused(d, match):
    """The InvalidArgumentError a hub on the --curve-dir ``d`` raises; a hub that starts is closed, and fails."""
    try:
        hub = WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=None, curve_dir=str(d))
    except InvalidArgumentError as e:
        assert match in str(e), e
        return e
    hub.close()
    pytest.fail(f"the hub started; expected an InvalidArgumentError saying {match!r}")


async def _until(cond, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < end:
        await asyncio.sleep(0.05)
    return cond()


def test_a_message_over_the_limit_drops_the_connection_before_it_is_buffered(monkeypatch):
    # The limit applies (checked at 1 MiB, so that the test does not buffer hundreds of MiB).
    real_limit = getattr(W, "MAX_WORKER_MESSAGE_BYTES", None)
    monkeypatch.setattr(W, "MAX_WORKER_MESSAGE_BYTES", 1 << 20, raising=False)
    got = []

    async def main():
        hub = WorkerHub("tcp://127.0.0.1:0", on_hello=lambda i, h: got.append(h.worker_id), on_event=None,
                        on_lost=None)
        assert hub.sock.getsockopt(zmq.MAXMSGSIZE) == 1 << 20
        task = asyncio.ensure_future(hub.recv_loop())
        sizes = []
        handle = hub._handle
        hub._handle = lambda frames, *a: (sizes.append(len(frames[-1])), handle(frames, *a))
        ctx = zmq.Context()
        s = _dealer(ctx, hub.endpoint, b"big", None, None)
        try:
            s.send(b"\0" * (2 << 20))
            await asyncio.sleep(1.0)
            assert sizes == [], "the oversized frame reached the controller"
            # Its connection was dropped and made again: a worker's Hello under it still gets in.
            s.send(_hello(b"big", 1))
            assert await _until(lambda: got == ["big"])
        finally:
            task.cancel()
            s.close()
            ctx.term()
            hub.close()

    asyncio.run(main())
    # The real bound fits the largest message a worker sends: the first Tokens of a 128k-token prompt that asked
    # for prompt_logprobs with 20 alternatives (measured on 1,024 tokens here), with room to spare.
    tl = [P.TokenLogprobs(logprob=-1.25, top_ids=list(range(150_000, 150_020)), top_logprobs=[-2.5] * 20)] * 1024
    per_1k = len(P.encode(P.Tokens(id=1, token_ids=[1], prompt_logprobs=tl)))
    assert 4 * per_1k * 128 < real_limit <= 1 << 30


def test_bad_key_files_are_typed_errors_naming_the_file_and_leave_nothing(tmp_path, monkeypatch):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    threads = set(threading.enumerate())
    d = _keys(tmp_path)
    # A malformed public key among the workers': every other key used to be dropped with it, unsaid.
    (d / "workers" / "typo.key").write_text("not a certificate\n")
    assert str(d / "workers" / "typo.key") in str(_refused(d, "typo.key"))
    (d / "workers" / "typo.key").unlink()
    # server.key_secret holding only the public key (the wrong file copied): a TypeError before.
    (d / "server.key_secret").write_bytes((d / "server.key").read_bytes())
    assert str(d / "server.key_secret") in str(_refused(d, "public key only"))
    # A key of the wrong length.
    (d / "server.key_secret").write_text('curve\n    public-key = "abc"\n    secret-key = "def"\n')
    _refused(d, "malformed key")
    assert os.listdir(private_tmp) == []
    assert set(threading.enumerate()) - threads == set()


def test_local_workers_get_the_public_key_of_server_key_secret_not_a_stale_server_key(tmp_path):
    d = _keys(tmp_path)
    real_public, _ = zmq.auth.load_certificate(str(d / "server.key_secret"))
    zmq.auth.create_certificates(str(tmp_path), "old")
    (d / "server.key").write_bytes((tmp_path / "old.key").read_bytes())  # left from an older pair
    got = []

    async def main():
        hub = WorkerHub("tcp://127.0.0.1:0", on_hello=lambda i, h: got.append(h.worker_id), on_event=None,
                        on_lost=None, curve_dir=str(d))
        server_key, secret_key = hub.local_curve
        task = asyncio.ensure_future(hub.recv_loop())
        ctx = zmq.Context()
        s = _dealer(ctx, hub.endpoint, b"local-w0", secret_key, zmq.auth.load_certificate(server_key)[0])
        try:
            assert not server_key.startswith(str(d)), "the local workers were handed the user's server.key"
            assert zmq.auth.load_certificate(server_key)[0] == real_public
            assert os.stat(secret_key).st_mode & 0o077 == 0
            s.send(_hello(b"local-w0", 1))
            assert await _until(lambda: got == ["local-w0"]), "a local worker with the keys it was given got nothing in"
        finally:
            task.cancel()
            s.close()
            ctx.term()
            hub.close()

    asyncio.run(main())


def test_secret_keys_other_users_can_read_are_warned_of(tmp_path, caplog):
    d = _keys(tmp_path, "w1")
    caplog.set_level(logging.WARNING)
    WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=None, curve_dir=str(d)).close()
    assert "chmod 600" not in caplog.text
    os.chmod(d / "server.key_secret", 0o644)
    os.chmod(tmp_path / "w1.key_secret", 0o640)
    WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=None, curve_dir=str(d)).close()
    warned = [r.getMessage() for r in caplog.records if "chmod 600" in r.getMessage()]
    assert len(warned) == 1 and str(d / "server.key_secret") in warned[0] and "644" in warned[0]
    # A worker's --curve-secret-key, read by the same loader.
    from warmserve.security import load_curve_key  # here: the module had none before the review's fixes

    load_curve_key(str(tmp_path / "w1.key_secret"), secret=True, what="--curve-secret-key")
    warned = [r.getMessage() for r in caplog.records if "chmod 600" in r.getMessage()]
    assert len(warned) == 2
    assert "--curve-secret-key" in warned[1] and str(tmp_path / "w1.key_secret") in warned[1]


def test_a_refused_key_is_logged_once_by_the_controller(tmp_path, caplog):
    d = _keys(tmp_path, "rogue")
    rogue_public = zmq.auth.load_certificate(str(tmp_path / "rogue.key"))[0].decode()
    caplog.set_level(logging.WARNING)

    async def main():
        hub = WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=None, curve_dir=str(d))
        server_public = zmq.auth.load_certificate(str(d / "server.key"))[0]
        ctx = zmq.Context()
        socks = [_dealer(ctx, hub.endpoint, b"r%d" % i, tmp_path / "rogue.key_secret", server_public)
                 for i in range(3)]
        try:
            assert await _until(lambda: "refused a CURVE peer" in caplog.text)
            await asyncio.sleep(0.5)
        finally:
            for s in socks:
                s.close()
            ctx.term()
            hub.close()

    asyncio.run(main())
    refused = [r for r in caplog.records if "refused a CURVE peer" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    assert rogue_public in refused[0].getMessage() and str(d / "workers") in refused[0].getMessage()


def _admitting_hub(d, hellos: list, lost: list) -> WorkerHub:
    """A CURVE hub on ``d``'s keys that admits every Hello it hears (its pid into ``hellos``) as a ready worker,
    and puts the reason of every loss into ``lost``."""
    def on_hello(ident, h):
        hellos.append(h.pid)
        hub.workers[ident] = WorkerRecord(worker_id=h.worker_id, ident=ident, device=h.device, pid=h.pid,
                                          capacity_bytes=h.capacity_bytes, page_bytes=h.page_bytes, host="x",
                                          ready=True)

    hub = WorkerHub("tcp://127.0.0.1:0", on_hello=on_hello, on_event=None, on_lost=lambda w, why: lost.append(why),
                    curve_dir=str(d))
    return hub


def test_a_worker_id_stays_with_the_key_it_joined_with(tmp_path, caplog):
    d = _keys(tmp_path, "a", "b", listed=("a", "b"))
    server_public = zmq.auth.load_certificate(str(d / "server.key"))[0]
    hellos, lost = [], []
    caplog.set_level(logging.WARNING)
    rid = b"gpu-node-1-4242-cuda0"

    async def main():
        hub = _admitting_hub(d, hellos, lost)
        task = asyncio.ensure_future(hub.recv_loop())
        ctx = zmq.Context()
        a = _dealer(ctx, hub.endpoint, rid, tmp_path / "a.key_secret", server_public)
        b = None
        try:
            a.send(_hello(rid, 4242))
            assert await _until(lambda: hellos == [4242])
            victim = hub.workers[rid]
            # Another allowed key under the victim's id (ROUTER_HANDOVER gives it the id), another pid.
            b = _dealer(ctx, hub.endpoint, rid, tmp_path / "b.key_secret", server_public)
            b.send(_hello(rid, 9999))
            assert await _until(lambda: lost)
            await asyncio.sleep(0.3)
            assert hellos == [4242], "the impostor's Hello was admitted"
            assert "another CURVE key" in lost[0] and not victim.alive
            with pytest.raises(WorkerLostError):  # nothing more goes to the id the impostor holds
                hub.send(victim, P.GetStats(id=7))
            assert "refused Hello under worker id" in caplog.text
            # A Hello again under the other key changes nothing: the id stays with the key it joined with.
            b.send(_hello(rid, 9999))
            await asyncio.sleep(0.3)
            assert hellos == [4242] and len(lost) == 1
        finally:
            task.cancel()
            a.close()
            if b is not None:
                b.close()
            ctx.term()
            hub.close()

    asyncio.run(main())


def test_a_worker_started_again_with_a_rotated_key_keeps_its_id(tmp_path):
    """Found in review: a worker with a fixed --worker-id that joined with key a, was lost (its process gone) and
    started again with key b, also listed (a key rotation), was refused for as long as the controller ran."""
    d = _keys(tmp_path, "a", "b", listed=("a", "b"))
    server_public = zmq.auth.load_certificate(str(d / "server.key"))[0]
    hellos = []
    rid = b"gpu-node-1"

    async def main():
        hub = _admitting_hub(d, hellos, [])
        task = asyncio.ensure_future(hub.recv_loop())
        ctx = zmq.Context()
        a = _dealer(ctx, hub.endpoint, rid, tmp_path / "a.key_secret", server_public)
        b = None
        try:
            a.send(_hello(rid, 100))
            assert await _until(lambda: hellos == [100])
            a.close()  # its process ends, and the controller gives it up (its heartbeats stopped)
            hub.lose(hub.workers[rid], "no heartbeat")
            b = _dealer(ctx, hub.endpoint, rid, tmp_path / "b.key_secret", server_public)
            b.send(_hello(rid, 200))
            assert await _until(lambda: hellos == [100, 200]), "the rotated key's worker was refused its id"
        finally:
            task.cancel()
            if b is not None:
                b.close()
            ctx.term()
            hub.close()

    asyncio.run(main())
