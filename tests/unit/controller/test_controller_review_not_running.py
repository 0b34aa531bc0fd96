"""A worker that answers a request's Generate with "the model is not running here" (ModelStateError, as
worker/core.py's ``_instance`` does when the instance was deactivated or switched just before the request got there)
refused it for the controller's own race between routing and that switch, not for anything the client did. Found in
review: the client got the worker's 409 (404, UnknownModelError, when the weights were evicted too). Now the
instance is stopped, its requests start over on a fresh instance (the request is served), and a request refused
again past controller.max_worker_losses_per_request fails with a 503 and Retry-After. Scripted peers on real ZeroMQ
sockets, through the real HTTP API."""

import pytest
from aiohttp.test_utils import TestClient, TestServer

from warmserve import protocol as P
from warmserve.controller.api import Api
from warmserve.errors import ModelStateError, UnknownModelError

from controller_harness import MODEL, TablePeer, make_controller, run, until


class SwitchedPeer(TablePeer):
    """A worker whose instance of a model is deactivated on it (``evict``: and its weights evicted) just before a
    Generate reaches it, ``switches`` times (None: every time): it answers that Generate as worker/core.py's
    ``_instance`` (``_model``) does then."""

    switches: int | None = 1
    evict = False

    async def handle(self, msg):
        if isinstance(msg, P.Generate) and self.models.get(msg.model) == "running" and self.switches != 0:
            if self.switches is not None:
                self.switches -= 1
            self.models[msg.model] = "prewarmed"
            del self.instances[msg.model]
            if self.evict:
                del self.models[msg.model]
        state = self.models.get(msg.model) if isinstance(msg, P.Generate) else "running"
        if state is None:
            await self.send(P.Error.of(msg.id, UnknownModelError(
                f"model {msg.model!r} is not on worker {self.wid}: prewarm it first", model=msg.model)))
            return
        if state != "running":
            await self.send(P.Error.of(msg.id, ModelStateError(
                f"model {msg.model!r} is {state} on worker {self.wid}, not running: activate it first",
                model=msg.model, state=state)))
            return
        await super().handle(msg)


def _generates(peer) -> int:
    return sum(isinstance(m, P.Generate) for m in peer.got)


async def _serve(model, switches, evict=False, **cc):
    """(status, body, Retry-After, peer, controller) of one completion whose first Generate (or every one) meets
    its instance just switched off (``evict``: and evicted); checks that nothing stays in flight afterwards."""
    c = make_controller(model, **cc)
    ep = await c.start()
    SwitchedPeer.switches, SwitchedPeer.evict = 0, evict
    peer = SwitchedPeer(ep)
    try:
        await c.wait_for_workers(1, 5)
        async with TestClient(TestServer(Api(c).app())) as http:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 3}
            assert (await http.post("/v1/completions", json=body)).status == 200  # the instance is up
            peer.switches = switches
            r = await http.post("/v1/completions", json=body)
            out = (r.status, await r.json(), r.headers.get("Retry-After"), peer, c)
        st = c.state
        assert await until(lambda: not any(w.gens or w.seqs for w in c.gpu_workers), 5)
        assert all(i.in_flight == 0 and i.prefill_tokens_pending == 0 for i in st.instances.values())
        assert not st.queues[MODEL] and c._open_requests() == 0
        return out
    finally:
        await c.close(drain=False)
        peer.close()


@pytest.mark.parametrize("evict", [False, True])
def test_a_request_that_meets_its_instance_just_switched_off_is_served_on_a_fresh_one(model, evict):
    async def main():
        status, body, _, peer, c = await _serve(model, switches=1, evict=evict)
        assert status == 200, body
        assert body["choices"][0]["finish_reason"] == "length"
        assert _generates(peer) == 3  # the first request, the refused one, and its start over
        assert (c.metrics.rerouted.get(model=MODEL), c.metrics.migrated.get(model=MODEL)) == (1, 0)

    run(main())


def test_a_request_refused_so_again_and_again_gets_a_503_with_retry_after(model):
    async def main():
        status, body, retry_after, peer, c = await _serve(model, switches=None, max_worker_losses_per_request=2)
        assert status == 503 and retry_after is not None, body
        assert "not running" in body["error"]["message"] and "max_worker_losses_per_request" in body["error"][
            "message"], body
        assert _generates(peer) == 3  # the first request; the refused one, once started over
        assert c.metrics.requests.get(model=MODEL, outcome="error") == 1

    run(main())
