"""A close: draining with requests queued that nothing can serve any more (the only worker is being restarted, and
a close stops restarts), and the Shutdowns of local workers. Real child processes stand for the local workers'
processes, and a scripted peer speaks for each over ZeroMQ."""

import asyncio
import time

import pytest

from warmserve import protocol as P
from warmserve.controller.errors import OverloadedError
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, collect, make_controller, run, scripted_local_worker, sleeper, stop, until

WID = "host-1-cpu0"


def test_close_does_not_wait_out_the_drain_for_requests_no_worker_can_serve(model):
    """Found in review: close() waited the whole drain_timeout_s (30 s by default) for the queued request, then
    failed it with 'shutting down' all the same."""
    async def main():
        c = make_controller(model, restart_backoff_s=30.0, drain_timeout_s=15.0)
        ep = await c.start()
        procs = scripted_local_worker(c, ep, WID)
        try:
            await c.wait_for_workers(1, 5)
            assert await collect(c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))) == [5, 6, 7]
            procs[0].kill()  # the heartbeat loop's poll finds it exited: lost, its restart waits out 30 s
            assert await until(lambda: not c.gpu_workers and WID.encode() in c.restarting, 5)
            req = c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))
            assert c.state.queued(MODEL) == 1
            t0 = time.monotonic()
            await asyncio.wait_for(c.close(), 10)
            assert time.monotonic() - t0 < 3.0
            with pytest.raises(OverloadedError, match="shutting down"):
                await collect(req)
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())


def test_close_still_drains_a_queued_request_a_ready_worker_serves(model):
    """The other side: a request queued while an instance starts is served before the close goes on."""
    async def main():
        c = make_controller(model, drain_timeout_s=15.0)
        ep = await c.start()
        peer = Peer(ep, WID)
        try:
            await c.wait_for_workers(1, 5)
            peer.hold_activate = True  # the instance starts, and the request waits for it
            req = c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))
            got = asyncio.ensure_future(collect(req))
            closing = asyncio.ensure_future(c.close())
            await asyncio.sleep(0.3)
            assert not closing.done() and c.state.queued(MODEL) == 1
            peer.hold_activate = False
            await peer.handle(next(m for m in reversed(peer.got) if type(m).__name__ == "Activate"))
            assert await asyncio.wait_for(got, 5) == [5, 6, 7]
            await asyncio.wait_for(closing, 10)
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())


class ExitsOnShutdown(Peer):
    """Answers Shutdown (after ``delay_s``), then its process ``proc`` exits, and its socket closes with it."""

    delay_s = 0.0
    proc = None

    async def handle(self, msg):
        if isinstance(msg, P.Shutdown):
            await asyncio.sleep(self.delay_s)
            await super().handle(msg)
            # Its process exits (WorkerProc.kill closes this peer too), not from within this task, which it cancels.
            asyncio.get_running_loop().call_soon(self.proc.kill)
        else:
            await super().handle(msg)


def test_a_worker_that_exits_on_shutdown_is_not_lost_while_the_close_waits_for_the_others(model):
    """Found in review: the heartbeat loop ran on while close waited for every Shutdown's answer, and its next
    heartbeat to a worker that had answered and exited failed: 'lost: send failed' in an orderly close."""
    async def main():
        c = make_controller(model)  # heartbeats every 0.05 s
        ep = await c.start()
        procs, peers = [], []
        for i, delay_s in enumerate((0.0, 0.5)):  # the second answers late: the close waits for it
            p = sleeper()
            p.peer = ExitsOnShutdown(ep, f"host-1-cpu{i}", pid=p.pid)
            p.peer.delay_s, p.peer.proc = delay_s, p
            procs.append(p)
            peers.append(p.peer)
            c.local_procs[f"host-1-cpu{i}".encode()] = p
        try:
            await c.wait_for_workers(2, 5)
            await asyncio.wait_for(c.close(), 10)
            assert c.metrics.workers_lost.get() == 0
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())
