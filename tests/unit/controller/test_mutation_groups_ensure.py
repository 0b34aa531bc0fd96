"""What ``controller/groups.py`` does when a worker of a block of GPUs is gone (found by mutation testing):
``ensure`` fails at once with WorkerLostError (which the driver does not count against the model), not with the
GroupBuildError of a group that could not be built with every worker up, and rank 0 is asked for no store; and
``lost`` drops the shard of a stopped tensor-parallel instance's kept weights on the surviving rank. Scripted peers
on real ZeroMQ sockets speak for the workers of a real Controller."""

import asyncio

import pytest

from warmserve import protocol as P
from warmserve.controller.groups import GroupBuildError
from warmserve.errors import WorkerLostError
from warmserve.policy import actions as A
from warmserve.protocol import SamplingParams

from controller_harness import admitted, collect, make_controller, run, stop_ticks, tp2, until


def test_ensure_with_a_member_gone_raises_worker_lost_and_asks_no_store(model):
    """GPU 1's worker stops answering and is lost (its GPU leaves ``by_gpu``); ``ensure((0, 1))`` then raises
    WorkerLostError naming the gone worker, sends rank 0 no HostGroupStore, and leaves no group recorded."""
    tp_model = tp2(model)

    async def main():
        c = make_controller(tp_model)
        async with admitted(c, "host-1-cpu0", "host-1-cpu1") as peers:
            assert await until(lambda: c.groups.groups and all(r.ready for r in c.groups.groups.values()), 5)
            c.policy_running = False
            peers[1].silent = True
            assert await until(lambda: 1 not in c.by_gpu and not c.groups.groups, 5)
            stores = sum(isinstance(m, P.HostGroupStore) for m in peers[0].got)
            with pytest.raises(WorkerLostError, match=r"the process group of GPUs \[0, 1\] could not be built: a "
                                                      "worker is gone") as info:
                await asyncio.wait_for(c.groups.ensure((0, 1)), 5)
            assert not isinstance(info.value, GroupBuildError)
            await asyncio.sleep(0.1)
            assert sum(isinstance(m, P.HostGroupStore) for m in peers[0].got) == stores
            assert (0, 1) not in c.groups.groups

    run(main())


def test_a_lost_rank_drops_the_kept_weights_of_a_stopped_tp_instance_on_the_other_rank(model):
    """A tp = 2 instance served and stopped (its Deactivates keep both shards resident, the driver's kept weights);
    GPU 1's worker is then lost: the kept weights leave the driver, and rank 0's worker gets the Evict of its shard,
    which would otherwise stay there unknown to the driver."""
    tp_model = tp2(model)

    async def main():
        c = make_controller(tp_model)
        async with admitted(c, "host-1-cpu0", "host-1-cpu1") as peers:
            req = c.submit_nowait(tp_model.name, [1, 2], SamplingParams(max_tokens=3))
            assert await collect(req) == [5, 6, 7]
            await stop_ticks(c)
            (iid,) = c.state.instances
            c.driver.apply(A.StopInstance(iid), c.now_s())
            assert [k.gpus for k in c.driver.kept.values()] == [(0, 1)]
            assert await until(lambda: all(not p.instances for p in peers), 5)
            peers[1].silent = True
            assert await until(lambda: 1 not in c.by_gpu, 5)
            assert not c.driver.kept
            assert await until(lambda: [m.name for m in peers[0].got if isinstance(m, P.Evict)] == [tp_model.name], 5)

    run(main())
