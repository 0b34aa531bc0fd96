"""``warmserve_workers{state="lost"}`` (``Controller.lost_workers``) when remote workers come back. Found in review:
a worker back under its own id also took another lost worker's place on its host and device, so with one of two
lost workers back the gauge read 0. And the 504 of a model only lost workers could hold. Scripted peers on real
ZeroMQ sockets, two CPU workers on one host."""

import asyncio

import pytest

from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.controller.models import controller_model
from warmserve.errors import TimeoutError_
from warmserve.policy.config import policy_config_from_dict
from warmserve.protocol import SamplingParams

from controller_harness import Peer, collect, demo_path, make_controller, run, until


def test_a_worker_back_under_its_own_id_takes_only_its_own_place(model):
    async def main():
        c = make_controller(model)
        ep = await c.start()
        peers = [Peer(ep, "otherhost-1-cpu0"), Peer(ep, "otherhost-2-cpu0")]
        back = None
        try:
            await c.wait_for_workers(2, 5)
            for p in peers:
                p.silent = True  # no heartbeat: lost after worker_timeout_s (1.5 s)
            assert await until(lambda: len(c.lost_workers) == 2, 10), c.lost_workers
            peers[0].close()
            back = Peer(ep, "otherhost-1-cpu0")  # the first, restarted under its own id
            assert await until(lambda: any(w.ready and w.ident == b"otherhost-1-cpu0" for w in c.gpu_workers), 10)
            await asyncio.sleep(0.2)
            assert list(c.lost_workers) == [b"otherhost-2-cpu0"]
        finally:
            await c.close(drain=False)
            for p in peers[1:] + [back]:
                if p is not None:
                    p.close()

    run(main())


def test_a_timeout_says_when_only_lost_workers_could_hold_the_model(model):
    """Found in review: a model whose one capable worker was lost waited out request_timeout_s (as documented: it is
    served again when that worker rejoins) and got a 504 that named no cause."""
    big_model = controller_model(ModelSpec(path=demo_path("llama-90m")))  # 0.36 GB of weights, fp32
    cc = ControllerConfig(tick_s=0.05, heartbeat_interval_s=0.05, worker_timeout_s=1.5, request_timeout_s=0.8,
                          policy_config=policy_config_from_dict({"window_s": 30}))

    async def main():
        c = Controller(ClusterConfig(models=(model.spec, big_model.spec), controller=cc), [model, big_model])
        ep = await c.start()
        big = Peer(ep, "otherhost-1-cpu0")
        small = Peer(ep, "otherhost-2-cpu0", capacity_bytes=200 << 20)  # holds llama-20m, not llama-90m
        try:
            await c.wait_for_workers(2, 5)
            big.silent = True
            assert await until(lambda: len(c.lost_workers) == 1, 10)
            req = c.submit_nowait("llama-90m", [1], SamplingParams(max_tokens=3))
            with pytest.raises(TimeoutError_) as e:
                await asyncio.wait_for(collect(req), 10)
            assert "no live worker's pool can hold it, and those that could are lost" in str(e.value), e.value
        finally:
            await c.close(drain=False)
            big.close()
            small.close()

    run(main())
