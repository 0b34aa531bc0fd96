"""Requests time out wherever they wait. Found in review: the expiry ran only once the policy did, after
``wait_for_workers`` had seen every expected worker; a request submitted while the controller still waited for one
(the others serving already) outlived its deadline, queued or on a worker that never answered, until that wait
ended. Scripted peers on real ZeroMQ sockets; the second expected worker never comes."""

import asyncio
import contextlib

import pytest

from warmserve.errors import TimeoutError_
from warmserve import protocol as P
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, collect, make_controller, run, until


@pytest.mark.parametrize("where,match", [("queued", "could take the request within"),
                                         ("on_worker", "produced no token")])
def test_a_request_times_out_while_the_controller_still_waits_for_its_workers(model, where, match):
    async def main():
        c = make_controller(model, request_timeout_s=0.5)
        ep = await c.start()
        peer = Peer(ep)
        waiting = asyncio.ensure_future(c.wait_for_workers(2, 60))
        try:
            assert await until(lambda: any(w.ready for w in c.gpu_workers), 5)
            assert not c.policy_running
            if where == "queued":
                peer.hold_activate = True  # its instance never becomes ready
            else:
                assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
                peer.hold_generate = True
            req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
            with pytest.raises(TimeoutError_, match=match) as e:
                await asyncio.wait_for(collect(req), 5)
            assert e.value.http_status == 504 and not waiting.done()
            assert not c.state.queues[MODEL] and not any(w.gens for w in c.gpu_workers)
            assert all(i.in_flight == 0 and i.prefill_tokens_pending == 0 for i in c.state.instances.values())
            assert c.metrics.requests.get(model=MODEL, outcome="timeout") == 1
        finally:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await c.close(drain=False)
            peer.close()

    run(main())


class QueueingPeer(Peer):
    """A worker whose engine runs one sequence of MODEL and queues the other: its Stats (answered and pushed)
    say 2 in flight, 1 running once it runs MODEL, as a worker's engine behind max_num_seqs reports them."""

    def stats(self, id_: int) -> P.Stats:
        return P.Stats(id=id_, worker_id=self.wid, device="cpu", pid=self.pid, uptime_s=1.0,
                       pool={"page_bytes": 2 << 20, "total_bytes": 1 << 30, "free_bytes": 1 << 30}, models=[],
                       in_flight=2,
                       instances=[P.WorkerInstance(name=n, in_flight=2, running=1) for n in self.instances])

    async def handle(self, msg):
        if isinstance(msg, P.GetStats):
            await self.send(self.stats(msg.id))
        else:
            await super().handle(msg)


def test_a_request_that_waited_in_its_engines_queue_says_so(model):
    """Found in review: a request queued inside an engine (behind max_num_seqs) timed out as "produced no token",
    as if its worker had stalled. With the worker's Stats showing requests waiting there, the 504 says the request
    waited in the engine's queue, with the counts and the fix; a request that had tokens keeps the plain message
    (test_controller_requests.py)."""
    async def main():
        c = make_controller(model, request_timeout_s=0.5)
        ep = await c.start()
        peer = QueueingPeer(ep)
        try:
            await c.wait_for_workers(1, 5)
            peer.hold_generate = True
            req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
            assert await until(lambda: c.gpu_workers[0].gens, 5)
            await peer.send(peer.stats(0))  # pushed, as with every heartbeat
            with pytest.raises(TimeoutError_) as e:
                await asyncio.wait_for(collect(req), 5)
            text = str(e.value)
            assert "produced no token" in text and "waited in its engine's queue" in text, text
            assert "1 of 2 requests" in text and "behind 1 running" in text and "max_num_seqs 32" in text, text
            assert e.value.http_status == 504
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())



def test_the_engine_queue_is_named_only_for_a_request_without_tokens_whose_worker_sent_stats(model):
    """Found by mutation testing: which requests get the engine-queue wording was pinned on one side only (no
    token, Stats showing a queue); a request that had tokens, or a worker with no Stats yet, must keep the plain
    message (the latter without reading Stats it does not have)."""
    from warmserve.controller.expiry import no_token_message
    from warmserve.controller.requests import Req
    from warmserve.controller.workers import WorkerRecord

    c = make_controller(model, request_timeout_s=5.0)
    w = WorkerRecord("w1", b"w1", "cpu", 1, 1 << 30, 2 << 20, "host-1")
    plain = f"{w!r} produced no token for 5 s"
    req = Req(1, MODEL, [1], None, timeout_s=5.0)
    assert no_token_message(c, w, req) == plain
    w.stats = P.Stats(id=0, worker_id="w1", device="cpu", pid=1, uptime_s=1.0, pool={}, models=[], in_flight=2,
                      instances=[P.WorkerInstance(name=MODEL, in_flight=2, running=1)])
    assert "waited in its engine's queue (1 of 2 requests" in no_token_message(c, w, req)
    req.first_token_s = 1.0
    assert no_token_message(c, w, req) == plain
