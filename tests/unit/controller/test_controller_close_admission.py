"""A close that lands while a worker is being admitted ends at once: the admission is cancelled, even when the reply
it waits for arrives together with the close's own (found with tests/integration/test_controller_worker_link.py:
the close waited out a call timeout, 60 s)."""

import asyncio
import time

import pytest

from warmserve import protocol as P

from controller_harness import MODEL, Peer, make_controller, sleeper, stop

WID = "host-1-cpu0"


class ExitingPeer(Peer):
    """A local worker holding a model a previous controller left (its admission evicts it) that answers the
    admission's GetStats only once Shutdown has come, then the Shutdown, back to back, and nothing after (its
    process exits)."""

    held = None
    proc = None

    async def handle(self, msg):
        if isinstance(msg, P.GetStats) and self.held is None:
            self.held = msg
        elif isinstance(msg, P.Shutdown):
            await self.send(P.Stats(id=self.held.id, worker_id=self.wid, device="cpu", pid=self.pid, uptime_s=1.0,
                                    pool={"page_bytes": 2 << 20, "total_bytes": 1 << 30, "free_bytes": 1 << 30},
                                    models=[P.ModelState(name=MODEL, path="/left/over", state="prewarmed")],
                                    instances=[], in_flight=0))
            await super().handle(msg)
            self.silent = True
            self.proc.kill()
        else:
            await super().handle(msg)


def test_a_close_while_a_worker_is_admitted_does_not_wait_out_the_admissions_calls(model):
    async def main():
        c = make_controller(model)
        ep = await c.start()
        proc = sleeper()
        ident = WID.encode()
        c.local_procs[ident] = proc
        peer = ExitingPeer(ep, WID, pid=proc.pid)
        peer.proc = proc
        try:
            for _ in range(250):
                if c.hub.workers.get(ident) is not None and peer.held is not None:
                    break
                await asyncio.sleep(0.02)
            assert peer.held is not None, "the admission never asked for the worker's stats"
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(c.close(drain=False), 15)
            except asyncio.TimeoutError:
                pytest.fail("the close waited out the admission's next call (its cancellation was lost)")
            took_s = time.monotonic() - t0
        finally:
            peer.close()
            stop([proc])
        assert took_s < 5, f"the close took {took_s:.1f} s"

    asyncio.run(asyncio.wait_for(main(), 30))
