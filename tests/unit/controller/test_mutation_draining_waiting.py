"""Requests waiting in a model's queue when a worker drains (controller/draining.py, ``on_drain``), found by mutation
testing: with the last worker draining they fail at once with NoWorkersError (not at request_timeout_s); with
another worker serving they wait on. Scripted peers on real ZeroMQ sockets whose loads never end
(``TablePeer(load_s=None)``), so the requests wait for an instance that never gets ready."""

from __future__ import annotations

import asyncio

from warmserve import protocol as P
from warmserve.controller.errors import NoWorkersError
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, TablePeer, admitted, make_controller, run, until


def _draining_stats(peer: Peer) -> P.Stats:
    return P.Stats(id=0, worker_id=peer.wid, device="cpu", pid=peer.pid, uptime_s=1.0,
                   pool=P.PoolStats(page_bytes=2 << 20, total_bytes=1 << 30, free_bytes=1 << 30), models=[],
                   instances=[], in_flight=0, draining=True)


async def _waiting_while(c, peer: Peer, w):
    """A request submitted while no instance serves (its load hangs), then ``peer`` (of worker ``w``) drains."""
    req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
    await asyncio.sleep(0.1)
    assert not req.done and req.worker is None
    await peer.send(_draining_stats(peer))
    assert await until(lambda: w.draining, 4)
    return req


def test_the_last_worker_draining_fails_the_waiting_requests_at_once(model):
    """The only worker drains: nothing serves or comes, so the waiting request fails now with NoWorkersError
    naming the worker that drains."""
    async def main():
        c = make_controller(model)
        async with admitted(c, peer_cls=TablePeer, load_s=None) as (peer,):
            req = await _waiting_while(c, peer, c.gpu_workers[0])
            assert await until(lambda: req.done, 5)
            assert isinstance(req.error, NoWorkersError), req.error
            assert "host-1-cpu0" in str(req.error) and "drains (it was sent SIGTERM)" in str(req.error)

    run(main())


def test_a_worker_draining_beside_one_that_serves_leaves_the_waiting_requests_waiting(model):
    """One of two workers drains: the other still serves, so the waiting request is not failed."""
    async def main():
        c = make_controller(model)
        async with admitted(c, "host-1-cpu0", "host-2-cpu0", peer_cls=TablePeer, load_s=None) as peers:
            req = await _waiting_while(c, peers[0], c.by_gpu[0])
            await asyncio.sleep(0.3)
            assert not req.done and req.error is None

    run(main())
