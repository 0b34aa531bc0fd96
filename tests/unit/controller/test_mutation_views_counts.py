"""What ``controller/views.py`` computes from the workers' latest Stats, pinned against hand-computed values (found
by mutation testing: the unit tests read none of these figures). A worker's pages by role, with "unaccounted" the
rest of its pool and never below 0; the requests still on draining workers, summed over them; a worker's KV usage
over all its instances; and /stats' decode figures of an instance its worker does not report (zeros). Real Stats,
real WorkerRecords and requests; a real Controller with a scripted peer on a real ZeroMQ socket."""

from aiohttp.test_utils import TestClient, TestServer

from warmserve import protocol as P
from warmserve.controller import views
from warmserve.controller.api import Api
from warmserve.controller.requests import Req
from warmserve.controller.workers import WorkerRecord

from controller_harness import MODEL, TablePeer, admitted, make_controller, run


def _stats(instances=(), models=(), total_pages=0, free_pages=0) -> P.Stats:
    return P.Stats(id=0, worker_id="w", device="cpu", pid=1, uptime_s=1.0,
                   pool=P.PoolStats(page_bytes=2 << 20, total_pages=total_pages, free_pages=free_pages),
                   models=list(models), instances=list(instances), in_flight=0)


def _draining_worker(wid: str, gens: dict, stats: P.Stats | None) -> WorkerRecord:
    w = WorkerRecord(worker_id=wid, ident=wid.encode(), device="cpu", pid=1, capacity_bytes=1 << 30,
                     page_bytes=2 << 20, host="h")
    w.draining, w.gens, w.stats = True, gens, stats
    return w


def _req(rid: int, model: str, instance_id: str) -> Req:
    r = Req(rid, model, [1], None, timeout_s=60.0)
    r.instance_id = instance_id
    return r


def test_pages_by_role_leaves_the_rest_of_the_pool_unaccounted_and_never_below_zero():
    """100 pages, 40 free, 10 of a running model's weights, 5 of a prewarmed one's, 20 of KV: 25 unaccounted. A
    pool reported smaller than its parts (a Stats taken mid-change) reads 0 unaccounted, not a negative count."""
    models = [P.ModelState(name="a", path="/a", state="running", pages=10),
              P.ModelState(name="b", path="/b", state="prewarmed", pages=5)]
    inst = [P.WorkerInstance(name="a", in_flight=0, kv_pages=20)]
    assert views.pages_by_role(_stats(inst, models, total_pages=100, free_pages=40), {}) == {
        "free": 40, "weights": 10, "prewarmed": 5, "kv": 20, "unaccounted": 25}
    assert views.pages_by_role(_stats(inst, models, total_pages=60, free_pages=40), {})["unaccounted"] == 0


def test_draining_requests_sums_in_flight_and_running_over_the_draining_workers():
    """Two draining workers run requests of instances the policy's state no longer has: 2 on one (its Stats say
    1 of them runs), 1 on the other (no Stats: taken as running), and one of an instance still in the state (not
    counted). model -> (3 in flight, 2 running); a worker not draining counts nothing."""
    w1 = _draining_worker("w1", {1: _req(1, "m", "i1"), 2: _req(2, "m", "i1"), 3: _req(3, "m", "live")},
                          _stats([P.WorkerInstance(name="m", in_flight=2, running=1)]))
    w2 = _draining_worker("w2", {4: _req(4, "m", "i2")}, None)
    idle = _draining_worker("w3", {5: _req(5, "m", "i3")}, None)
    idle.draining = False
    assert views.draining_requests([w1, w2, idle], {"live": object()}) == {"m": (3, 2)}
    assert views.draining_requests([w1], {"live": object()}) == {"m": (2, 1)}


def test_collect_and_stats_read_the_workers_latest_stats(model):
    """With its worker's Stats set to two instances (KV 3 of 8 blocks used, and 1 of 8), the worker's KV usage is
    4 / 16 = 0.25 and its unaccounted pages 100 - 40 - 20 = 40; /stats gives the served instance zeros for its decode
    figures while its worker reports no entry of it, and the figures it reports once it does."""
    async def main():
        c = make_controller(model)
        async with admitted(c, peer_cls=TablePeer):
            async with TestClient(TestServer(Api(c).app())) as http:
                body = {"model": MODEL, "prompt": "x", "max_tokens": 3}
                assert (await http.post("/v1/completions", json=body)).status == 200
            w = c.gpu_workers[0]
            w.stats = _stats([P.WorkerInstance(name="a", in_flight=0, kv=P.KvStats(kv_blocks_total=8, kv_blocks_used=3),
                                               kv_pages=12),
                              P.WorkerInstance(name="b", in_flight=0, kv=P.KvStats(kv_blocks_total=8, kv_blocks_used=1),
                                               kv_pages=8)], total_pages=100, free_pages=40)
            views.collect(c)
            m = c.metrics
            assert m.worker_kv_usage.get(worker=w.worker_id) == 0.25
            assert m.kv_usage.get(worker=w.worker_id, model="a") == 3 / 8
            assert m.pages.get(worker=w.worker_id, role="unaccounted") == 40
            served = c.stats()["instances"]
            assert len(served) == 1 and served[0]["model"] == MODEL
            assert (served[0]["decode_step_s"], served[0]["decode_batch"], served[0]["decode_steps"]) == (0.0, 0.0, 0)
            w.stats = _stats([P.WorkerInstance(name=MODEL, in_flight=0, decode_step_s=0.05, decode_batch=2.0,
                                               decode_steps=7)])
            got = c.stats()["instances"][0]
            assert (got["decode_step_s"], got["decode_batch"], got["decode_steps"]) == (0.05, 2.0, 7)

    run(main())
