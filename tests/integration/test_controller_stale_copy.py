"""A real controller and two real local workers serving a tp = 2 model, one of which holds a shard of the model that
the controller does not know of. Found in CI: after a rank of a tp = 2 instance was SIGKILLed under load, the
surviving worker kept its shard (its Evict was refused, see tests/unit/worker/test_tp_evict_after_leave.py) while
the driver held the GPU empty; every later start of the model there was refused ("already prewarmed") and every
request answered 503 for the rest of the run. The start now evicts that copy and loads its own shard once more."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import serving
from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.controller.models import controller_model
from warmserve.controller.launch import spawn_worker
from warmserve.policy.config import PolicyConfig

MODEL = "llama-20m"
GREEDY = P.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def tp_model():
    return controller_model(ModelSpec(path=serving.demo_paths((MODEL,))[MODEL], tp=2))


async def _collect(req) -> list[int]:
    out = []
    async for ids in req:
        out += ids
    return out


async def _until(cond, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def test_a_start_on_a_worker_holding_a_shard_the_controller_does_not_know_evicts_it_and_serves(tp_model, tmp_path,
                                                                                              caplog):
    caplog.set_level(logging.INFO, logger="warmserve.controller")

    async def main():
        # No prewarms: the request's start is the model's first load, on both workers.
        cc = ControllerConfig(tick_s=0.1, heartbeat_interval_s=0.2, worker_timeout_s=10.0,
                              policy_config=PolicyConfig(window_s=30, prewarm=False))
        c = Controller(ClusterConfig(models=(tp_model.spec,), controller=cc), [tp_model])
        ep = await c.start()
        procs = [spawn_worker(ep.replace("tcp://*:", "tcp://127.0.0.1:"), "cpu", memory_bytes=256 << 20, threads=1,
                              worker_id=f"stalehost-w{i}-cpu0", heartbeat_interval_s=0.2, log_dir=str(tmp_path))
                 for i in range(2)]
        try:
            await c.wait_for_workers(2, 90, procs=procs)
            await _until(lambda: any(g.ready for g in c.groups.groups.values()), 60, "the group was never built")
            rank0 = c.by_gpu[0]
            # Behind the driver's back: rank 0's shard, as the survivor of the lost instance kept it.
            await c.hub.call(rank0, P.Prewarm(id=c.hub.next_id(), path=tp_model.spec.path, name=MODEL,
                                              dtype=tp_model.spec.dtype, tp=2, rank=0), 120)
            assert not c.driver.state.prewarms and not c.driver.state.instances

            got = await asyncio.wait_for(_collect(c.submit_nowait(MODEL, [5, 17, 300, 42], GREEDY)), 120)
            assert len(got) == GREEDY.max_tokens

            healed = [r.getMessage() for r in caplog.records if "does not count" in r.getMessage()]
            assert len(healed) == 1 and "(prewarmed)" in healed[0] and repr(rank0) in healed[0], healed
            # One copy on each worker: the instance's own shard.
            for w in (c.by_gpu[0], c.by_gpu[1]):
                st = await c.hub.call(w, P.GetStats(id=c.hub.next_id()), 30)
                assert [(m.name, m.state) for m in st.models] == [(MODEL, "running")], st.models
        finally:
            await c.close(drain=False)
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(10)

    asyncio.run(asyncio.wait_for(main(), 240))
