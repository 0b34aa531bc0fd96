"""``warmserve_tpot_seconds`` is observed for the requests that ended ``stop``, ``length`` or ``abort`` (those
vLLM's ``request_success_total`` counts, which it records its per-request histograms for), not for those that failed:
before, a request that failed after streaming tokens (its worker's error, its deadline) added its TPOT too. Through a
controller and a scripted peer on real ZeroMQ sockets (``controller_harness``), and each outcome at the metrics."""

import asyncio

import pytest

from warmserve import protocol as P
from warmserve.controller.metrics import OUTCOMES, ControllerMetrics
from warmserve.controller.requests import Req
from warmserve.errors import WarmServeError
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, collect, make_controller, run, until


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_tpot_is_observed_for_the_finished_outcomes_only(outcome):
    m = ControllerMetrics()
    r = Req(1, "m", [1, 2, 3], SamplingParams(), timeout_s=60)
    r.push([5])
    r.push([6, 7])
    m.tokens_pushed(r, 0, None)
    m.request_done(r, outcome)
    assert m.tpot.count(model="m") == (1 if outcome in ("stop", "length", "abort") else 0)
    assert m.e2e.count(model="m", outcome=outcome) == 1 and m.ttft.count(model="m") == 1


def test_a_request_that_fails_after_its_tokens_adds_no_tpot(model):
    """A worker's error after 2 tokens, a deadline after 2 tokens: no TPOT; a request served in full: one."""
    async def main():
        c = make_controller(model, request_timeout_s=0.6)
        ep = await c.start()
        peer = Peer(ep)
        try:
            await c.wait_for_workers(1, 5)
            assert await asyncio.wait_for(collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))), 8) \
                == list(peer.tokens)
            assert c.metrics.tpot.count(model=MODEL) == 1
            peer.hold_generate = True
            failed = c.submit_nowait(MODEL, [2], SamplingParams(max_tokens=8))
            late = c.submit_nowait(MODEL, [3], SamplingParams(max_tokens=8))
            assert await until(lambda: len(c.gpu_workers[0].gens) == 2, 4)
            by_req = {r: gid for gid, r in c.gpu_workers[0].gens.items()}
            for req in (failed, late):
                for t in (5, 6):
                    await peer.send(P.Tokens(id=by_req[req], token_ids=[t]))
            assert await until(lambda: failed.generated == late.generated == 2, 4)
            await peer.send(P.Error.of(by_req[failed], WarmServeError("the engine broke")))
            for req in (failed, late):  # the second one's deadline: no token within request_timeout_s
                with pytest.raises(WarmServeError):
                    await asyncio.wait_for(collect(req), 8)
            assert c.metrics.requests.get(model=MODEL, outcome="error") == 1
            assert c.metrics.requests.get(model=MODEL, outcome="timeout") == 1
            assert c.metrics.tpot.count(model=MODEL) == 1
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())
