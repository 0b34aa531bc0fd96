"""Requests time out wherever they wait. Found in review: the expiry ran only once the policy did, after
``wait_for_workers`` had seen every expected worker; a request submitted while the controller still waited for one
(the others serving already) outlived its deadline, queued or on a worker that never answered, until that wait
ended. Scripted peers on real ZeroMQ sockets; the second expected worker never comes."""

import asyncio
import contextlib

import pytest

from warmserve.errors import TimeoutError_
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
