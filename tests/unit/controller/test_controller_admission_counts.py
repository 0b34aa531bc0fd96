"""A worker being admitted (its Hello came: a rejoin, or a new worker joining) counts as one on its way, as a
restarting or replaced one does (found in review: a request submitted during a rejoin's admission got a 503
``NoWorkersError``, and the loss of the last ready worker failed the requests waiting while another was a moment
from serving them). Scripted workers on real sockets; their admission's Stats answered late."""

from __future__ import annotations

import asyncio

from warmserve import protocol as P
from warmserve.controller.errors import NoWorkersError
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, collect, make_controller, run, until


class SlowSecondAdmission(Peer):
    """Answers the admission's GetStats at once the first time, after 1.5 s from then on (a busy host)."""

    stats_answered = 0

    async def send(self, msg):
        if isinstance(msg, P.Stats) and msg.id:
            self.stats_answered += 1
            if self.stats_answered > 1:
                await asyncio.sleep(1.5)
        await super().send(msg)


def test_request_submitted_while_a_rejoining_worker_is_admitted_is_not_refused(model):
    async def main():
        c = make_controller(model, request_timeout_s=10.0)
        ep = await c.start()
        p = SlowSecondAdmission(ep, "host-1-cpu0")
        try:
            await c.wait_for_workers(1, 5)
            assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
            # the worker gave up on the controller for a moment and says Hello again: a rejoin
            await p.send(P.Hello(worker_id=p.wid, device="cpu", pid=p.pid, capacity_bytes=1 << 30,
                                 page_bytes=2 << 20, protocol_version=P.PROTOCOL_VERSION))
            assert await until(lambda: c.hub.workers and not any(w.ready for w in c.hub.workers.values()), 2)
            refused = None
            try:
                req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
            except NoWorkersError as e:
                refused = e
            assert refused is None, f"refused while the worker was being admitted again: {refused}"
            assert await asyncio.wait_for(collect(req), 8) == [5, 6, 7]
        finally:
            await c.close(drain=False)
            p.close()

    run(main())


class SlowAdmission(Peer):
    """Its admission's GetStats is answered after 2.5 s (a busy host, a worker that cleans up leftovers)."""

    async def send(self, msg):
        if isinstance(msg, P.Stats) and msg.id:
            await asyncio.sleep(2.5)
        await super().send(msg)


def test_waiting_request_kept_when_the_last_ready_worker_is_lost_while_another_is_being_admitted(model):
    """_on_lost fails every waiting request (NoWorkersError) when no worker is ready, restarting or replacing,
    forgetting workers whose Hello arrived and whose admission is under way."""
    async def main():
        c = make_controller(model, request_timeout_s=10.0)
        ep = await c.start()
        a = Peer(ep, "host-1-cpu0")
        b = None
        try:
            await c.wait_for_workers(1, 5)
            a.silent = True  # stops answering (its start never ends) and beating: lost after 1.5 s
            req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
            b = SlowAdmission(ep, "host-2-cpu0")  # joins now, ready in ~2.5 s
            assert await until(lambda: len(c.hub.workers) == 2, 2)
            out = await asyncio.wait_for(asyncio.gather(collect(req), return_exceptions=True), 9)
            assert out == [[5, 6, 7]], f"the waiting request ended with {out[0]!r}"
        finally:
            await c.close(drain=False)
            a.close()
            if b is not None:
                b.close()

    run(main())
