"""The controller's request life cycle against scripted peers on real ZeroMQ sockets: hang-ups, kept weights,
requests the wire cannot carry, failures before the first token, and that nothing is left in flight."""

import asyncio
import time

import pytest

from warmserve import protocol as P
from warmserve.errors import WarmServeError
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, collect, make_controller, run


def test_client_that_goes_away_mid_stream_aborts_its_generation(model):
    from aiohttp.test_utils import TestClient, TestServer

    from warmserve.controller.api import Api

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        async with TestClient(TestServer(Api(c).app())) as http:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 50}
            assert (await http.post("/v1/completions", json=body)).status == 200  # the instance is up
            peer.hold_generate = True
            posted = asyncio.ensure_future(http.post("/v1/completions", json={**body, "stream": True}))
            while not c.gpu_workers[0].gens:
                await asyncio.sleep(0.01)
            gid = next(iter(c.gpu_workers[0].gens))
            await peer.send(P.Tokens(id=gid, token_ids=[40]))
            r = await posted  # the status comes with the first token
            await r.content.readline()
            r.close()  # the client hangs up
            await peer.send(P.Tokens(id=gid, token_ids=[41]))  # the next write finds the connection gone
            for _ in range(200):
                if any(isinstance(m, P.Abort) and m.request_id == gid for m in peer.got):
                    break
                await asyncio.sleep(0.01)
            assert any(isinstance(m, P.Abort) and m.request_id == gid for m in peer.got)
        await c.close(drain=False)
        peer.close()

    run(main())


def test_stopped_instance_keeps_its_weights_without_a_copy(model):
    """Scale-in of an idle instance: the policy keeps its weights as a prewarm on the same worker. The controller
    only deactivates it (no Evict, no second Prewarm), the prewarm counts as loaded at once, and the next start is
    a prewarm hit that activates those weights."""

    async def main():
        c = make_controller(model, policy_options=(("load_window_s", 0.2), ("min_lifetime_s", 0.2),
                                                   ("idle_to_zero", True)))
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        for _ in range(200):
            if not c.instances and c.prewarms:
                break
            await asyncio.sleep(0.05)
        assert not c.instances and [p.model for p in c.prewarms.values()] == [MODEL]
        assert all(p.loaded for p in c.prewarms.values())
        assert [s.progress for s in c.state.prewarms.values()] == [1.0]
        await asyncio.sleep(0.2)  # a few more ticks: nothing is evicted or loaded again
        kinds = [type(m).__name__ for m in peer.got]
        assert kinds.count("Deactivate") == 1 and kinds.count("Evict") == 0 and kinds.count("Prewarm") == 1
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        kinds = [type(m).__name__ for m in peer.got]
        assert kinds.count("Prewarm") == 1 and kinds.count("Activate") == 2 and kinds.count("Evict") == 0
        assert c.metrics.prewarm_hits.get(model=MODEL) == 1 and c.metrics.prewarm_misses.get(model=MODEL) == 1
        await c.close(drain=False)
        peer.close()

    run(main())


def test_stopped_instance_weights_nobody_keeps_are_evicted(model):
    """Without prewarming (the autoscale baseline) nothing keeps a stopped instance's weights: the tick evicts
    them, so the worker's memory matches the policy's state again."""

    async def main():
        c = make_controller(model, policy="autoscale",
                            policy_options=(("load_window_s", 0.2), ("min_lifetime_s", 0.2), ("idle_to_zero", True)))
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        for _ in range(200):
            if not c.instances and any(isinstance(m, P.Evict) for m in peer.got):
                break
            await asyncio.sleep(0.05)
        kinds = [type(m).__name__ for m in peer.got]
        assert not c.instances and not c.prewarms and not c.driver.kept
        assert kinds.index("Deactivate") < kinds.index("Evict") and kinds.count("Evict") == 1
        await c.close(drain=False)
        peer.close()

    run(main())


def test_a_request_the_wire_cannot_carry_ends_and_leaves_nothing_in_flight(model):
    """A token id beyond 64 bits cannot be encoded for the worker: the request fails with a 400-class error and
    the instance's in-flight count goes back to 0 (it used to stay at 1 for ever, keeping the instance busy)."""
    from warmserve.errors import InvalidArgumentError

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        with pytest.raises(InvalidArgumentError, match="cannot be sent to a worker") as e:
            await collect(c.submit_nowait(MODEL, [2 ** 70], SamplingParams(max_tokens=3)))
        assert e.value.http_status == 400
        st = next(iter(c.state.instances.values()))
        assert st.in_flight == 0 and not c.gpu_workers[0].gens and c._open_requests() == 0
        assert c.metrics.requests.get(model=MODEL, outcome="error") == 1
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        await c.close(drain=False)
        peer.close()

    run(main())


@pytest.mark.parametrize("fault,options", [("queue_timeout", ()), ("every_worker_lost", ()),
                                           ("every_worker_lost", (("coserve_always", True),))])
def test_stream_that_fails_before_its_first_token_gets_a_real_status(model, fault, options):
    """Nothing streamed yet: the client gets 504 (queue timeout) or 503 (every worker lost) with the OpenAI error
    body, not a 200 followed by an SSE error event; nothing stays queued or in flight."""
    from aiohttp.test_utils import TestClient, TestServer

    from warmserve.controller.api import Api

    async def main():
        # With co-serving on, routing after the last GPU is lost must cope with no GPU (it once raised there).
        # The queue timeout must fire first in one case and never in the other: a 0.5 s request timeout raced the
        # harness's loss detection when that was 0.5 s too (a CI run answered 504 where 503 was due).
        c = make_controller(model, options, request_timeout_s=0.5 if fault == "queue_timeout" else 10.0)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        async with TestClient(TestServer(Api(c).app())) as http:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True}
            if fault == "queue_timeout":
                peer.hold_activate = True  # the instance never comes up: the request waits in the queue
            else:
                peer.hold_generate = True

                async def go_silent():
                    while not c.gpu_workers or not c.gpu_workers[0].gens:
                        await asyncio.sleep(0.01)
                    peer.silent = True

                silent = asyncio.ensure_future(go_silent())
            r = await http.post("/v1/completions", json=body)
            want = 504 if fault == "queue_timeout" else 503
            assert r.status == want and r.content_type == "application/json"
            err = (await r.json())["error"]
            assert err["message"] and ("retry" in err["message"])
            if fault == "every_worker_lost":
                await silent
                assert "every worker is lost" in err["message"]
            assert c._open_requests() == 0 and all(st.in_flight == 0 for st in c.state.instances.values())
        await c.close(drain=False)
        peer.close()

    run(main())


def test_worker_socket_on_the_network_needs_curve_or_insecure(model):
    """With no key directory the controller would admit any process as a worker: a non-loopback bind is refused
    unless told insecure (then it binds, with a warning)."""
    from warmserve.controller.workers import WorkerHub
    from warmserve.security import InsecureBindError

    def noop(*a):
        pass

    with pytest.raises(InsecureBindError, match="curve-dir"):
        WorkerHub("tcp://0.0.0.0:0", on_hello=noop, on_event=noop, on_lost=noop)
    hub = WorkerHub("tcp://0.0.0.0:0", on_hello=noop, on_event=noop, on_lost=noop, insecure=True)
    assert hub.endpoint.startswith("tcp://0.0.0.0:")
    hub.close()
    hub = WorkerHub("tcp://127.0.0.1:0", on_hello=noop, on_event=noop, on_lost=noop)
    hub.close()

    async def main():
        c = make_controller(model, bind="tcp://0.0.0.0:0")
        with pytest.raises(InsecureBindError):
            await c.start()

    run(main())


@pytest.mark.parametrize("how", ["abort", "timeout"])
def test_a_running_request_the_worker_never_ends_is_not_left_in_flight(model, how):
    """The worker never answers the Generate nor confirms the Abort (it lost or refused it unread): a client abort,
    or the request timeout, still ends the request's count on its instance."""
    async def main():
        c = make_controller(model, request_timeout_s=0.5)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        peer.hold_generate = True
        req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
        while not c.gpu_workers[0].gens:
            await asyncio.sleep(0.01)
        if how == "abort":
            req.abort()
        else:
            with pytest.raises(WarmServeError, match="produced no token"):
                await collect(req)
        for _ in range(100):
            if any(isinstance(m, P.Abort) for m in peer.got):
                break
            await asyncio.sleep(0.01)
        assert any(isinstance(m, P.Abort) for m in peer.got)
        st = next(iter(c.state.instances.values()))
        assert st.in_flight == 0 and not c.gpu_workers[0].gens and c._open_requests() == 0
        await c.close(drain=False)
        peer.close()

    run(main())


def test_a_request_sent_after_waiting_has_the_whole_timeout_on_its_worker(model):
    """A request that waited in the queue while its instance started has request_timeout_s on its worker from
    when it was sent, not from its arrival (a request that started over elsewhere waits so too)."""
    async def main():
        c = make_controller(model, request_timeout_s=0.6)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        peer.hold_activate = peer.hold_generate = True
        req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
        while not (act := next((m for m in peer.got if isinstance(m, P.Activate)), None)):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.45)
        await peer.send(P.Activated(id=act.id, name=act.name, kv_blocks=8, activate_s=0.0, copied_bytes=0))
        while not c.gpu_workers[0].gens:
            await asyncio.sleep(0.01)
        t_sent = time.monotonic()
        with pytest.raises(WarmServeError, match="produced no token"):
            await collect(req)
        assert time.monotonic() - t_sent >= 0.6 - 0.06  # one tick of slack
        await c.close(drain=False)
        peer.close()

    run(main())


def test_a_request_behind_one_that_started_over_still_times_out_in_the_queue(model):
    """A request that starts over (a migration, a lost worker) goes to the front of its queue with a fresh
    deadline; the older requests behind it still time out at their own."""
    async def main():
        # 0.8 s between the two deadlines: a loaded machine's late ticks stay far inside it, and a queue that
        # expired only its front would fail `old` after `front`, not before
        c = make_controller(model, request_timeout_s=1.0)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        peer.hold_activate = True  # the instance never becomes ready: requests wait
        old = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
        t_old = time.monotonic()
        await asyncio.sleep(0.8)
        front = c.submit_nowait(MODEL, [2], SamplingParams(max_tokens=3))
        front_deadline_s = time.monotonic() - t_old + 1.0
        q = c.state.queues[MODEL]
        q.remove(front)
        q.appendleft(front)  # where a request that started over waits
        with pytest.raises(WarmServeError, match="could take the request within"):
            await collect(old)
        waited_s = time.monotonic() - t_old
        assert not front.done and waited_s < front_deadline_s, waited_s
        with pytest.raises(WarmServeError, match="could take the request within"):
            await collect(front)
        await c.close(drain=False)
        peer.close()

    run(main())
