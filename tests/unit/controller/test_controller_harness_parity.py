"""The controller tests' scripted workers (controller_harness.Peer and TablePeer) answer as the real one
(worker/core.py) does: one script of requests goes to a real WorkerCore on a real pool and model and to each
stand-in over a real ZeroMQ socket, and they answer it with the same replies and refusals (found in review: the
stand-ins answered Evict and Deactivate with Ok, and ran a second exclusive instance that a real worker refuses)."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq
import zmq.asyncio

from warmserve import protocol as P
from warmserve.memory import PagePool
from warmserve.worker.core import WorkerCore

from controller_harness import Peer, TablePeer

#: (request, its expected answer: a reply type or the typed error's name) in order; the ids are the positions.
SCRIPT = [
    (lambda i, path: P.Prewarm(id=i, path=path, name="a"), "Prewarmed"),
    (lambda i, path: P.Prewarm(id=i, path=path, name="b"), "Prewarmed"),
    (lambda i, path: P.Activate(id=i, name="a", kv_blocks=2), "Activated"),
    (lambda i, path: P.Activate(id=i, name="a", kv_blocks=2), "ModelStateError"),  # running already
    (lambda i, path: P.Activate(id=i, name="b", kv_blocks=2), "ModelStateError"),  # a second exclusive instance
    (lambda i, path: P.Activate(id=i, name="b", kv_blocks=2, shared=True), "ModelStateError"),  # beside one
    (lambda i, path: P.Evict(id=i, name="a"), "ModelStateError"),  # running: deactivate it first
    (lambda i, path: P.Deactivate(id=i, name="b"), "ModelStateError"),  # not running
    (lambda i, path: P.Deactivate(id=i, name="a"), "Deactivated"),
    (lambda i, path: P.Activate(id=i, name="a", kv_blocks=2, shared=True), "Activated"),
    (lambda i, path: P.Activate(id=i, name="b", kv_blocks=2, shared=True), "Activated"),  # every one shared
    (lambda i, path: P.Deactivate(id=i, name="a"), "Deactivated"),
    (lambda i, path: P.Deactivate(id=i, name="b"), "Deactivated"),
    (lambda i, path: P.Evict(id=i, name="a"), "Evicted"),
    (lambda i, path: P.Evict(id=i, name="a"), "UnknownModelError"),  # (Peer keeps no model table: not sent it)
    (lambda i, path: P.Abort(id=i, request_id=99), "Ok"),
    (lambda i, path: P.Shutdown(id=i), "Ok"),
]


def _answer(reply) -> str:
    return reply.type if isinstance(reply, P.Error) else type(reply).__name__


def _final(reply, rid: int) -> bool:
    return getattr(reply, "id", None) == rid and not isinstance(reply, P.PrewarmProgress)


def real_answers(path: str) -> list[str]:
    pool = PagePool(256 << 20, prefault=False)
    replies = []
    core = WorkerCore(pool, device="cpu", worker_id="w", emit=lambda peer, m: replies.append(m))
    out = []
    try:
        for i, (make, _) in enumerate(SCRIPT, 1):
            core.handle("controller", make(i, path))
            deadline = time.monotonic() + 60
            while not (got := [m for m in replies if _final(m, i)]):
                assert time.monotonic() < deadline, f"the worker never answered request {i}"
                if not core.tick():
                    time.sleep(0.001)
            out.append(_answer(got[-1]))
    finally:
        core.close()
        pool.close()
    return out


async def stand_in_answers(peer_cls, path: str, script) -> list[str]:
    ctx = zmq.asyncio.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    peer = peer_cls(f"tcp://127.0.0.1:{port}")
    out = []
    try:
        ident, hello = await asyncio.wait_for(router.recv_multipart(), 10)
        assert isinstance(P.decode_reply(hello), P.Hello)
        for i, (make, _) in script:
            await router.send_multipart([ident, P.encode(make(i, path))])
            while not _final(reply := P.decode_reply((await asyncio.wait_for(router.recv_multipart(), 10))[1]), i):
                pass  # heartbeats, progress
            out.append(_answer(reply))
    finally:
        peer.close()
        router.close(0)
    return out


@pytest.fixture(scope="module")
def real(model) -> list[str]:
    return real_answers(model.spec.path)


@pytest.mark.parametrize("peer_cls", [TablePeer, Peer])
def test_the_scripted_worker_answers_as_a_real_worker(model, real, peer_cls):
    assert real == [want for _, want in SCRIPT]  # the script states what worker/core.py does
    script = [(i, row) for i, row in enumerate(SCRIPT, 1) if peer_cls is TablePeer or row[1] != "UnknownModelError"]
    want = [real[i - 1] for i, _ in script]
    assert asyncio.run(stand_in_answers(peer_cls, model.spec.path, script)) == want
