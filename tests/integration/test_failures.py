"""A worker killed under load: every request completes within a bound (those that had streamed tokens resume on
another instance after them), the surviving worker's pool accounts for every page, and the cluster keeps serving."""

import asyncio
import os
import signal
import time

from warmserve.engine import SamplingParams
from warmserve.errors import WorkerLostError

import serving

MODEL = "llama-20m"
BOUND_S = 60.0

cluster = serving.cluster_fixture(models=(MODEL,), cpu_worker_memory_bytes=512 << 20, drain_timeout_s=5)
PARAMS = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)


def test_kill_worker_under_load(cluster):
    ctl = cluster.controller
    assert cluster.generate(MODEL, "warm up", max_tokens=2).completion_tokens >= 1

    async def run():
        async def one(i):
            t0 = time.monotonic()
            try:
                out = await cluster.agenerate(MODEL, f"request number {i}", params=PARAMS)
                return "ok", out.completion_tokens, time.monotonic() - t0
            except WorkerLostError as e:
                return "lost", str(e), time.monotonic() - t0

        first = [asyncio.ensure_future(one(i)) for i in range(16)]
        # Kill the worker serving the instance once tokens flow, while more requests arrive.
        victim = None
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            busy = [w for w in ctl.gpu_workers if any(r.generated > 0 for r in list(w.gens.values()))]
            victim = busy[0] if busy else None
        assert victim is not None, "no request started streaming"
        os.kill(victim.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        later = [asyncio.ensure_future(one(100 + i)) for i in range(8)]
        results = await asyncio.wait_for(asyncio.gather(*first, *later), BOUND_S)
        return victim, t_kill, results

    victim, t_kill, results = asyncio.run(run())
    assert [r[0] for r in results] == ["ok"] * 24, [r[1] for r in results if r[0] != "ok"]
    resumed = ctl.metrics.resumed.get(model=MODEL, why="worker_lost")
    assert resumed >= 1, "the requests that had streamed from the killed worker resume elsewhere"
    # Each ran to max_tokens (EOS ignored): a resumption generates only what follows the tokens the client has
    # (tests/integration/test_migrate.py checks that greedy decoding goes on as the uninterrupted run would).
    assert [r[1] for r in results] == [PARAMS.max_tokens] * 24
    assert not victim.alive and time.monotonic() - t_kill < BOUND_S

    # The cluster keeps serving on the survivor.
    out = cluster.generate(MODEL, "still there?", max_tokens=4)
    assert out.completion_tokens >= 1
    assert asyncio.run(cluster.agenerate(MODEL, "and from asyncio?", max_tokens=2)).completion_tokens >= 1
    stats = cluster.stats()
    survivors = [w for w in stats["workers"] if w["alive"] and w["worker_id"] != victim.worker_id]
    assert len(survivors) == 1
    assert ctl.metrics.workers_lost.get() == 1
    # The killed (local) worker is started again under its id and joins as a new GPU: full capacity.
    deadline = time.monotonic() + BOUND_S
    while sum(w["ready"] for w in cluster.stats()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = cluster.stats()["workers"]
    assert len(workers) == 2 and all(w["ready"] for w in workers), workers
    assert victim.gpu_id not in {w["gpu_id"] for w in workers}

    # No leaked pages: once idle, every page the survivor's pool has handed out belongs to a model's weights
    # or to a running instance's mapped KV cache.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        w = asyncio.run(_fresh_stats(cluster, survivors[0]["worker_id"]))
        if w["in_flight"] == 0:
            break
        time.sleep(0.2)
    assert w["in_flight"] == 0
    pages = w["pages"]
    assert pages["unaccounted"] == 0, w
    assert pages["weights"] > 0 and pages["free"] > 0


async def _fresh_stats(cluster, worker_id: str) -> dict:
    from warmserve import protocol as P

    ctl = cluster.controller
    w = next(w for w in ctl.gpu_workers if w.worker_id == worker_id)
    fut = asyncio.run_coroutine_threadsafe(
        ctl.hub.call(w, P.GetStats(id=ctl.hub.next_id())), cluster._loop)
    s = await asyncio.wrap_future(fut)
    from warmserve.controller.views import pages_by_role

    return {"in_flight": s.in_flight, "pages": pages_by_role(s, ctl.models), "pool": s.pool}
