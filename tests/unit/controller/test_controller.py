"""The controller's routing, starts, failures and policy actions against scripted peers on real ZeroMQ sockets
(controller_harness.Peer speaks warmserve.protocol as a worker would)."""

import asyncio
import time

import pytest

from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.controller.errors import NoWorkersError, OverloadedError
from warmserve.errors import UnknownModelError, WarmServeError
from warmserve.policy.config import policy_config_from_dict
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, collect, make_controller, run


def test_routes_starts_and_streams(model):
    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        assert [g.total_bytes for g in c.state.gpus] == [1 << 30]
        with pytest.raises(UnknownModelError):
            c.model("nope")
        req = c.submit_nowait(MODEL, [1, 2, 3], SamplingParams(max_tokens=3))
        assert await collect(req) == [5, 6, 7] and req.finish_reason == "length"
        kinds = [type(m).__name__ for m in peer.got]
        assert kinds.index("Prewarm") < kinds.index("Activate") < kinds.index("Generate")
        st = next(iter(c.state.instances.values()))
        assert st.ready and st.in_flight == 0 and st.kv_blocks_total == 8
        assert c.metrics.prewarm_misses.get(model=MODEL) == 1 and c.metrics.ttft.count(model=MODEL) == 1
        # a second request reuses the instance: no new Prewarm
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        assert [type(m).__name__ for m in peer.got].count("Activate") == 1
        await c.close()
        assert any(isinstance(m, P.Shutdown) for m in peer.got) is False  # remote workers are left running
        peer.close()

    run(main())


def test_queue_bound_and_no_workers(model):
    async def main():
        c = make_controller(model, max_queue=1)
        ep = await c.start()
        with pytest.raises(NoWorkersError):
            c.submit_nowait(MODEL, [1], SamplingParams())
        peer = Peer(ep)
        peer.hold_generate = True
        await c.wait_for_workers(1, 5)
        first = c.submit_nowait(MODEL, [1], SamplingParams())  # waits for the instance to start
        with pytest.raises(OverloadedError) as e:
            c.submit_nowait(MODEL, [1], SamplingParams())
        assert e.value.http_status == 503 and "limit 1" in str(e.value)
        first.abort()
        await c.close(drain=False)
        peer.close()

    run(main())


def test_failed_starts_back_off_then_fail_waiting_requests(model):
    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep, fail_prewarm=True)
        await c.wait_for_workers(1, 5)
        req = c.submit_nowait(MODEL, [1], SamplingParams())
        with pytest.raises(WarmServeError, match="could not start an instance.*disk on fire"):
            await collect(req)
        prewarms = [m for m in peer.got if isinstance(m, P.Prewarm)]
        assert len(prewarms) == 3  # START_ATTEMPTS, with a pause between, not a tight loop
        await c.close(drain=False)
        peer.close()

    run(main())


def test_silent_worker_is_lost_and_running_request_fails_clearly(model):
    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep, tokens=(5,))
        await c.wait_for_workers(1, 5)
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams())) == [5]
        # one token out, then silence: the request would resume elsewhere after its token, but no worker is
        # left, so it ends with the reason
        peer.hold_generate = True
        req = c.submit_nowait(MODEL, [1], SamplingParams())
        await asyncio.sleep(0.1)
        gid = next(iter(c.gpu_workers[0].gens))
        await peer.send(P.Tokens(id=gid, token_ids=[9]))
        peer.silent = True
        t0 = time.monotonic()
        with pytest.raises(NoWorkersError, match="every worker is lost.*retry"):
            await collect(req)
        assert req.token_ids == [9] and c.metrics.resumed.get(model=MODEL, why="worker_lost") == 1
        assert time.monotonic() - t0 < 3.0
        assert not c.gpu_workers and not c.state.instances
        assert [g.gone for g in c.state.gpus] == [True] and c.state.servers[0].gpu_ids == ()
        assert c.metrics.workers_lost.get() == 1
        # requests that arrive now get a clear 503 at once rather than waiting forever
        with pytest.raises(NoWorkersError) as refused:
            c.submit_nowait(MODEL, [1], SamplingParams())
        assert refused.value.http_status == 503
        await c.close(drain=False)
        peer.close()

    run(main())


def test_requests_queued_on_a_lost_worker_move_to_another(model):
    async def main():
        c = make_controller(model)
        ep = await c.start()
        a = Peer(ep, wid="host-1-cpu0")
        await c.wait_for_workers(1, 5)
        a.hold_generate = True
        reqs = [c.submit_nowait(MODEL, [1], SamplingParams()) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert sum(len(w.gens) for w in c.gpu_workers) == 3
        b = Peer(ep, wid="host-2-cpu0")
        await c.wait_for_workers(2, 5)
        a.silent = True  # no token was streamed: all three are re-routed to b
        outs = await asyncio.gather(*(collect(r) for r in reqs))
        assert outs == [[5, 6, 7]] * 3
        assert all(r.reroutes == 1 for r in reqs) and c.metrics.rerouted.get(model=MODEL) == 3
        await c.close(drain=False)
        a.close()
        b.close()

    run(main())


def test_history_drives_a_prewarm_that_the_next_start_uses(model):
    """A history with load on model b every window: the first plan prewarms b; b's first request then starts an
    instance from that prewarm (Activate with no second Prewarm), counted as a prewarm hit."""
    import dataclasses

    import numpy as np

    a = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="a"))
    b = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="b"))
    now = time.time()
    starts = np.arange(now - 2 * 86400, now - 30, 30.0)
    history = {"a": (starts, np.zeros_like(starts), np.zeros_like(starts)),
               "b": (starts, np.full_like(starts, 8.0), np.full_like(starts, 40.0))}

    async def main():
        cc = ControllerConfig(tick_s=0.05, heartbeat_interval_s=0.05, worker_timeout_s=0.5,
                              policy_config=policy_config_from_dict({"window_s": 30}))
        c = Controller(ClusterConfig(models=(a.spec, b.spec), controller=cc), [a, b], history=history)
        # the distance around the day, not of the two remainders: found in review, a run just before midnight
        # wrapped one side to ~0 and left the other at ~86400
        gap_s = (c.now_s() - (now - c.clock_origin_s)) % 86400
        assert min(gap_s, 86400 - gap_s) <= 5
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        for _ in range(100):
            if c.prewarms and all(p.loaded for p in c.prewarms.values()):
                break
            await asyncio.sleep(0.05)
        assert [p.model for p in c.prewarms.values()] == ["b"]
        assert [m.name for m in peer.got if isinstance(m, P.Prewarm)] == ["b"]
        assert await collect(c.submit_nowait("b", [1], SamplingParams())) == [5, 6, 7]
        assert [m.name for m in peer.got if isinstance(m, P.Prewarm)] == ["b"]  # no cold load
        assert c.metrics.prewarm_hits.get(model="b") == 1 and c.metrics.prewarm_misses.get(model="b") == 0
        await c.close(drain=False)
        peer.close()

    run(main())


def test_curve_admits_only_workers_with_known_keys(model, tmp_path):
    import zmq.auth

    zmq.auth.create_certificates(str(tmp_path), "server")
    (tmp_path / "workers").mkdir()
    (tmp_path / "strangers").mkdir()
    zmq.auth.create_certificates(str(tmp_path / "workers"), "w1")
    zmq.auth.create_certificates(str(tmp_path / "strangers"), "w2")
    server_pub, _ = zmq.auth.load_certificate(str(tmp_path / "server.key"))

    async def main():
        c = make_controller(model, curve_dir=str(tmp_path))
        ep = await c.start()
        stranger = Peer(ep, wid="host-9-cpu0", curve=(server_pub, *zmq.auth.load_certificate(
            str(tmp_path / "strangers" / "w2.key_secret"))))
        with pytest.raises(WarmServeError, match="0 of 1 workers"):
            await c.wait_for_workers(1, 1.0)
        friend = Peer(ep, wid="host-1-cpu0", curve=(server_pub, *zmq.auth.load_certificate(
            str(tmp_path / "workers" / "w1.key_secret"))))
        await c.wait_for_workers(1, 5)
        assert [w.worker_id for w in c.gpu_workers] == ["host-1-cpu0"]
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams())) == [5, 6, 7]
        await c.close(drain=False)
        friend.close()
        stranger.close()

    run(main())


def test_stream_cut_by_a_lost_worker_ends_with_an_error_event_over_http(model):
    """Over HTTP with the official client: tokens already streamed, then the worker goes silent; the stream ends
    with an error event the client raises, well within the worker timeout plus a margin."""
    openai = pytest.importorskip("openai")
    from aiohttp.test_utils import TestServer

    from warmserve.controller.api import Api

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        server = TestServer(Api(c).app())
        await server.start_server()
        client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0)
        try:
            # a first request starts the instance; the next one streams one token and is then cut off
            await client.completions.create(model=MODEL, prompt="a", max_tokens=3)
            peer.hold_generate = True

            async def feed():
                while not c.gpu_workers or not c.gpu_workers[0].gens:
                    await asyncio.sleep(0.01)
                gid = next(iter(c.gpu_workers[0].gens))
                await peer.send(P.Tokens(id=gid, token_ids=[40]))
                peer.silent = True

            # the feeder first: the status (and so create()) waits for the first token
            feeder = asyncio.ensure_future(feed())
            stream = await client.completions.create(model=MODEL, prompt="b", max_tokens=3, stream=True)
            got = []
            t0 = time.monotonic()
            with pytest.raises(openai.APIError, match="lost.*retry"):  # no worker left to resume it on
                async for chunk in stream:
                    got.append(chunk.choices[0].text)
            await feeder
            assert "".join(got) and time.monotonic() - t0 < 3.0
        finally:
            await client.close()
            await server.close()
            await c.close(drain=False)
            peer.close()

    run(main())


@pytest.mark.parametrize("policy", ["shared", "dedicated"])
def test_static_baselines_lay_out_once_all_workers_are_in(model, policy):
    """`shared` colocates every model on each worker with fixed KV shares; `dedicated` gives each model its own
    worker. Both place once, after the expected workers registered."""
    import dataclasses

    a = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="a"))
    b = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="b"))

    async def main():
        cc = ControllerConfig(tick_s=0.05, heartbeat_interval_s=0.05, worker_timeout_s=0.5, policy=policy)
        c = Controller(ClusterConfig(models=(a.spec, b.spec), controller=cc), [a, b])
        ep = await c.start()
        peers = [Peer(ep, wid="host-1-cpu0"), Peer(ep, wid="host-1-cpu1")]
        await c.wait_for_workers(2, 5)
        for name in ("a", "b"):
            assert await collect(c.submit_nowait(name, [1], SamplingParams())) == [5, 6, 7]
        acts = [(p.wid, m) for p in peers for m in p.got if isinstance(m, P.Activate)]
        if policy == "shared":
            assert sorted((w, m.name) for w, m in acts) == [("host-1-cpu0", "a"), ("host-1-cpu0", "b"),
                                                             ("host-1-cpu1", "a"), ("host-1-cpu1", "b")]
            assert all(m.shared and m.kv_blocks and m.kv_blocks > 0 for _, m in acts)
        else:
            assert sorted(m.name for _, m in acts) == ["a", "b"] and len({w for w, _ in acts}) == 2
            assert not any(m.shared for _, m in acts)
        await c.close(drain=False)
        for p in peers:
            p.close()

    run(main())


def test_policy_options_reach_the_policy(model):
    c = make_controller(model, policy_options=(("instance_capacity", 8),))
    assert c.policy.cfg.instance_capacity == 8 and c.policy.cfg.window_s == 30
    with pytest.raises(ValueError, match="known"):
        make_controller(model, policy_options=(("instance_capacty", 8),))


def test_http_limit_gives_429_with_the_reason(model):
    """Too many requests in flight over HTTP: 429, OpenAI-shaped; the ones in flight still complete."""
    from aiohttp.test_utils import TestClient, TestServer

    from warmserve.controller.api import Api

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        async with TestClient(TestServer(Api(c, max_concurrent_requests=2).app())) as http:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
            assert (await http.post("/v1/completions", json=body)).status == 200  # the instance is up
            peer.hold_generate = True
            held = [asyncio.ensure_future(http.post("/v1/completions", json=body)) for _ in range(2)]
            while sum(len(w.gens) for w in c.gpu_workers) < 2:
                await asyncio.sleep(0.01)
            r = await http.post("/v1/completions", json=body)
            assert r.status == 429
            err = (await r.json())["error"]
            assert err["code"] == "rate_limit_exceeded" and "limit is 2" in err["message"]
            for gid in list(c.gpu_workers[0].gens):
                await peer.send(P.Tokens(id=gid, token_ids=[1], finished=True, finish_reason="length"))
            assert [(await h).status for h in held] == [200, 200]
        await c.close(drain=False)
        peer.close()

    run(main())


def test_prompt_tokens_count_as_prefill_load_until_the_first_token(model):
    """The live controller feeds the policy's prefill-aware scale-out: a request's prompt counts while it waits
    and while its instance prefills, and stops counting once its first token is out."""

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        peer.hold_activate = True  # the instance is starting: the request waits in the queue
        req = c.submit_nowait(MODEL, list(range(1, 41)), SamplingParams(max_tokens=3))
        assert c.state.queued_prompt_tokens[MODEL] == 40
        peer.hold_generate = True

        async def received(kind):
            for _ in range(300):
                got = [m for m in peer.got if isinstance(m, kind)]
                if got:
                    return got[0]
                await asyncio.sleep(0.01)
            raise AssertionError(f"the peer never got a {kind.__name__}")

        act = await received(P.Activate)
        peer.hold_activate = False
        await peer.send(P.Activated(id=act.id, name=act.name, kv_blocks=8, activate_s=0.0, copied_bytes=0))
        for _ in range(200):  # routed: the tokens move onto the instance, prefilling
            await asyncio.sleep(0.01)
            if c.state.queued_prompt_tokens[MODEL] == 0:
                break
        inst = next(iter(c.state.instances.values()))
        assert c.state.queued_prompt_tokens[MODEL] == 0 and inst.prefill_tokens_pending == 40
        gen = await received(P.Generate)
        await peer.send(P.Tokens(id=gen.id, token_ids=[5]))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if inst.prefill_tokens_pending == 0:
                break
        assert inst.prefill_tokens_pending == 0
        await peer.send(P.Tokens(id=gen.id, token_ids=[6], finished=True, finish_reason="length"))
        assert await collect(req) == [5, 6]
        await c.close()
        peer.close()

    run(main())


@pytest.mark.parametrize("used,mapped", [(3, 3), (0, 1)])
def test_kv_pages_a_worker_holds_count_as_mapped_blocks(model, used, mapped):
    """Workers on pages of four KV blocks (ClusterConfig.worker_page_bytes): an instance reports `used` blocks in
    use, `mapped` mapped, on one page. The policy counts the page's 4 blocks as mapped and asks for whole pages, so
    a report that does not change makes it send nothing: counting blocks, it would ask for KV (evicting prewarms)
    at every tick when busy, and, idle with its one free block, ask again at every tick for what the page holds."""
    block = model.kv_bytes_per_token * 256

    async def main():
        c = make_controller(model, worker_page_bytes=4 * block)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        assert c.state.models[MODEL].kv_blocks_per_page == 4
        assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        inst = next(iter(c.state.instances.values()))
        kv = P.KvStats(kv_blocks_total=8, kv_blocks_used=used, kv_blocks_mapped=mapped, block_tokens=256)
        stats = P.Stats(id=0, worker_id=peer.wid, device="cpu", pid=1, uptime_s=1.0,
                        pool={"page_bytes": 4 * block, "total_bytes": 1 << 30, "free_bytes": 1 << 30}, models=[],
                        instances=[P.WorkerInstance(name=MODEL, in_flight=0, kv=kv, kv_pages=1)], in_flight=0)
        for _ in range(100):
            await peer.send(stats)
            await asyncio.sleep(0.02)
            if inst.kv_blocks_used == used and inst.kv_blocks_mapped == 4:
                break
        await asyncio.sleep(0.1)  # a target the first reports prompted is answered
        sent = sum(isinstance(m, P.SetKvTarget) for m in peer.got)
        for _ in range(10):  # several ticks (0.05 s each) with the same report
            await peer.send(stats)
            await asyncio.sleep(0.05)
        assert (inst.kv_blocks_used, inst.kv_blocks_mapped) == (used, 4)
        assert sum(isinstance(m, P.SetKvTarget) for m in peer.got) == sent
        await c.close(drain=False)
        peer.close()

    run(main())


def test_a_fired_call_leaves_no_entry_once_its_worker_answers(model):
    """Found in review: a control request sent with executor.fire (Evict, Deactivate, LeaveGroup) kept its entry
    in the worker's table of calls until the worker was lost, one more per request over a server's life."""
    from warmserve.controller.executor import fire

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep)
        await c.wait_for_workers(1, 5)
        w = c.by_gpu[0]
        replies = []
        for _ in range(3):
            fire(c.hub, w, P.LeaveGroup(id=c.hub.next_id(), group_id="none"), on_reply=replies.append)
        for _ in range(200):
            if len(replies) == 3:
                break
            await asyncio.sleep(0.01)
        assert [type(r).__name__ for r in replies] == ["Ok"] * 3
        assert w.calls == {}
        await c.close(drain=False)
        peer.close()

    run(main())
