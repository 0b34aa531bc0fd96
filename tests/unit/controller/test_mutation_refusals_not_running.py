"""What ``refusals.not_running`` pins beyond test_controller_review_not_running.py (found by mutation testing): a
Generate answered with an error that is not "not running here" is the worker's answer to the client and starts
nothing over; a refusal that starts the request over is handled whole (no exception in the event handler); and the
503 past controller.max_worker_losses_per_request counts the starts over it made. Scripted peers on real ZeroMQ
sockets, through the real HTTP API."""

import logging

from aiohttp.test_utils import TestClient, TestServer

from warmserve import protocol as P
from warmserve.controller import refusals
from warmserve.controller.api import Api
from warmserve.controller.errors import InstanceGoneError
from warmserve.controller.requests import Req
from warmserve.errors import InvalidArgumentError, ModelStateError
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, TablePeer, admitted, make_controller, run, until

BODY = {"model": MODEL, "prompt": "x", "max_tokens": 3}


class RefusingPeer(TablePeer):
    """A worker that answers the next ``refusals`` Generates (None: every one) of a running model with ``error``,
    after the first Generate it serves; a ModelStateError also switches its instance off first, as worker/core.py's
    ``_instance`` answers a request that meets its instance just deactivated."""

    refusals: int | None = 0
    error = "not running"

    async def handle(self, msg):
        if isinstance(msg, P.Generate) and self.refusals != 0:
            if self.refusals is not None:
                self.refusals -= 1
            if self.error == "not running":
                if msg.model in self.instances:
                    self.models[msg.model] = "prewarmed"
                    del self.instances[msg.model]
                err = ModelStateError(f"model {msg.model!r} is prewarmed on worker {self.wid}, not running: activate "
                                      "it first", model=msg.model, state="prewarmed")
            else:
                err = InvalidArgumentError("the sampling values are out of range here", param="sampling")
            await self.send(P.Error.of(msg.id, err))
            return
        await super().handle(msg)


def _generates(peer) -> int:
    return sum(isinstance(m, P.Generate) for m in peer.got)


async def _second_completion(model, refusals, error="not running", **cc):
    """(status, body, peer, controller) of a completion sent after a first one was served, the peer answering
    ``refusals`` Generates from then on with ``error``; checks that nothing stays in flight afterwards."""
    c = make_controller(model, **cc)
    RefusingPeer.refusals, RefusingPeer.error = 0, error
    async with admitted(c, peer_cls=RefusingPeer) as (peer,):
        async with TestClient(TestServer(Api(c).app())) as http:
            assert (await http.post("/v1/completions", json=BODY)).status == 200  # the instance is up
            peer.refusals = refusals
            r = await http.post("/v1/completions", json=BODY)
            out = (r.status, await r.json(), peer, c)
        assert await until(lambda: not any(w.gens or w.seqs for w in c.gpu_workers), 5)
        assert not c.state.queues[MODEL] and c._open_requests() == 0
        return out


def test_a_generate_error_other_than_not_running_reaches_the_client_and_starts_nothing_over(model):
    """A worker's InvalidArgumentError to a Generate is no refusal of the routing race: the client gets its 400 with
    the worker's words at once, the request is not sent again, and no reroute is counted."""
    async def main():
        status, body, peer, c = await _second_completion(model, refusals=1, error="invalid")
        assert status == 400, body
        assert "the sampling values are out of range here" in body["error"]["message"], body
        assert _generates(peer) == 2  # the first request and this one, once
        assert c.metrics.rerouted.get(model=MODEL) == 0
        assert c.metrics.requests.get(model=MODEL, outcome="error") == 1

    run(main())


def test_a_refusal_that_starts_the_request_over_is_handled_without_an_error_logged(model, caplog):
    """The request a switched-off instance refused moves (off its worker's table) and is served; the handler ends
    there, so nothing goes on to end that Generate a second time (which raised, logged at ERROR by the hub)."""
    async def main():
        status, body, peer, c = await _second_completion(model, refusals=1)
        assert status == 200, body
        assert _generates(peer) == 3  # the first request, the refused one, and its start over
        assert c.metrics.requests.get(model=MODEL, outcome="error") == 0

    with caplog.at_level(logging.INFO, logger="warmserve"):
        run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_503_past_the_limit_counts_the_starts_over_the_request_made(model, caplog):
    """With max_worker_losses_per_request=2 the first refusal starts the request over (1 < 2) and the second fails
    it: its message says it started over once, at the limit of 2; handled whole, nothing is logged at ERROR."""
    async def main():
        status, body, peer, c = await _second_completion(model, refusals=None, max_worker_losses_per_request=2)
        assert status == 503, body
        assert ("it started over 1 time(s), the most controller.max_worker_losses_per_request=2 allows: retry it"
                in body["error"]["message"]), body
        assert _generates(peer) == 3

    with caplog.at_level(logging.INFO, logger="warmserve"):
        run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_refusal_of_an_instance_the_controller_no_longer_runs_fails_the_request_at_once(model):
    """``not_running`` of a request sent to an instance gone from the controller's books (stopped, or lost, while
    the Generate was under way): its first refusal (1 < the limit) cannot start it over there, so it fails at once
    with InstanceGoneError saying so, off its worker's table. Another error is not handled here."""
    async def main():
        c = make_controller(model)
        async with admitted(c, peer_cls=TablePeer):
            w = c.gpu_workers[0]
            req = Req(1, MODEL, [1], SamplingParams(), timeout_s=60.0)
            req.instance_id, w.gens[7] = "llama-20m/i-gone", req
            assert not refusals.not_running(c, w, 7, req, InvalidArgumentError("bad", param="prompt"))
            assert req.error is None and w.gens[7] is req and req.reroutes == 0
            refused = ModelStateError(f"model {MODEL!r} is prewarmed, not running", model=MODEL, state="prewarmed")
            assert refusals.not_running(c, w, 7, req, refused)
            e = req.error
            assert isinstance(e, InstanceGoneError) and 7 not in w.gens and req.reroutes == 1
            assert ("the controller runs no instance llama-20m/i-gone there any more: retry it" in str(e)
                    and "started over" not in str(e)), e
            assert (e.refusals, e.limit) == (1, c.cc.max_worker_losses_per_request)

    run(main())
