"""/stats while a worker drains: the instance it still serves is listed (``draining`` true) with the request that
streams on there in its ``in_flight``. Before, a drain took the instance out of the policy's state and so out of
/stats, and ``instances[].in_flight`` summed to less than ``workers[].in_flight`` and
``warmserve_inflight_requests``. Scripted peers on real ZeroMQ sockets (``controller_harness``)."""

import asyncio

from warmserve import protocol as P
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, collect, make_controller, run, until


def _draining_stats(peer: Peer) -> P.Stats:
    return P.Stats(id=0, worker_id=peer.wid, device="cpu", pid=peer.pid, uptime_s=1.0,
                   pool=P.PoolStats(page_bytes=2 << 20, total_bytes=1 << 30, free_bytes=1 << 30), models=[],
                   instances=[], in_flight=1, draining=True)


def test_stats_lists_a_draining_workers_instance_with_its_requests_in_flight(model):
    async def main():
        c = make_controller(model)
        ep = await c.start()
        peers = {p.wid.encode(): p for p in (Peer(ep, "host-1-cpu0"), Peer(ep, "host-2-cpu0"))}
        try:
            await c.wait_for_workers(2, 5)
            for p in peers.values():
                p.hold_generate = True
            req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
            assert await until(lambda: any(w.gens for w in c.gpu_workers), 4)
            w = next(x for x in c.gpu_workers if x.gens)
            peer = peers[w.ident]
            (gid,) = w.gens
            iid = w.gens[gid].instance_id

            await peer.send(_draining_stats(peer))
            assert await until(lambda: w.draining, 4)
            assert iid not in c.state.instances  # the policy no longer has it: the request runs on regardless
            s = c.stats()
            mine = [i for i in s["instances"] if i["instance_id"] == iid]
            assert len(mine) == 1, s["instances"]
            assert mine[0]["in_flight"] == 1 and mine[0]["draining"] and mine[0]["worker"] == w.worker_id
            assert mine[0]["model"] == MODEL and mine[0]["gpus"] == [w.gpu_id]
            assert sum(i["in_flight"] for i in s["instances"]) == sum(x["in_flight"] for x in s["workers"]) == 1
            c.metrics.registry.render()  # the gauges agree with /stats
            assert c.metrics.inflight.get(model=MODEL) == 1

            for t in peer.tokens[:-1]:
                await peer.send(P.Tokens(id=gid, token_ids=[t]))
            await peer.send(P.Tokens(id=gid, token_ids=[peer.tokens[-1]], finished=True, finish_reason="length"))
            assert await asyncio.wait_for(collect(req), 8) == list(peer.tokens)
            s = c.stats()
            assert sum(i["in_flight"] for i in s["instances"]) == 0
        finally:
            await c.close(drain=False)
            for p in peers.values():
                p.close()

    run(main())
