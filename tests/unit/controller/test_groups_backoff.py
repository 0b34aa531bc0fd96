"""Process groups of a tp=2 model whose build fails (a worker answers its JoinGroup with an Error, as GroupTable does
for a join that raised: an NCCL init error), or whose member is lost while rank 0 hosts the store. Scripted peers
on real sockets; real child processes stand for the local workers' processes where one is replaced."""

import asyncio
import dataclasses

import pytest

from warmserve import protocol as P
from warmserve.config import ModelSpec
from warmserve.errors import WorkerLostError

from controller_harness import (MODEL, Peer, exits_on_shutdown, make_controller, peers_in_order, run, sleeper, stop,
                               until)


@pytest.fixture(scope="module")
def tp_model(model):
    return dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name=model.name, tp=2))


class FailingJoin(Peer):
    """Answers JoinGroup with an Error while ``failing``."""

    failing = True

    async def handle(self, msg):
        if isinstance(msg, P.JoinGroup) and self.failing:
            await self.send(P.Error.of(msg.id, WorkerLostError(f"could not join group {msg.group_id!r}: NCCL error")))
        else:
            await super().handle(msg)


def _joins(peer) -> int:
    return len([m for m in peer.got if isinstance(m, P.JoinGroup)])


def test_a_group_that_fails_to_build_is_prewarmed_again_with_back_off(tp_model):
    """Found in review: rebuilt on every policy tick for ever (twice a second at the default tick), each try a
    warning and a LeaveGroup to every member."""
    async def main():
        c = make_controller(tp_model)  # ticks every 0.05 s
        ep = await c.start()
        peers = await peers_in_order(c, ep, "host-1-cpu0", "host-1-cpu1", peer_cls=FailingJoin)
        try:
            await asyncio.sleep(2.5)  # tries at 0 s and 1 s; the next waits 2 s more
            assert max(_joins(p) for p in peers) <= 3, [_joins(p) for p in peers]
            assert not c.groups.groups and c.groups.failures[(0, 1)][0] >= 2
        finally:
            await c.close(drain=False)
            for p in peers:
                p.close()

    run(main())


def test_a_group_built_after_failures_starts_its_count_afresh(tp_model):
    async def main():
        c = make_controller(tp_model)
        c.groups.retry_s = 0.1
        ep = await c.start()
        peers = await peers_in_order(c, ep, "host-1-cpu0", "host-1-cpu1", peer_cls=FailingJoin)
        try:
            assert await until(lambda: c.groups.failures.get((0, 1), (0,))[0] >= 2, 3)
            for p in peers:
                p.failing = False
            assert await until(lambda: (g := c.groups.groups.get((0, 1))) is not None and g.ready, 3)
            assert c.groups.failures == {}
        finally:
            await c.close(drain=False)
            for p in peers:
                p.close()

    run(main())


def test_a_fresh_process_on_a_gpu_of_the_set_ends_its_back_off(tp_model):
    """The failure may have gone with the old process: the next prewarm builds at once, not after the back-off."""
    async def main():
        c = make_controller(tp_model)
        c.groups.retry_s = 30.0
        ep = await c.start()
        rank0 = Peer(ep, "host-1-cpu0")
        assert await until(lambda: any(w.ready for w in c.hub.workers.values()), 5)
        procs = []

        def spawn():  # the first process fails its joins, its replacement does not
            p = sleeper()
            p.peer = exits_on_shutdown((FailingJoin if not procs else Peer)(ep, "host-1-cpu1", pid=p.pid), p)
            procs.append(p)
            return p

        c.local_spawn[b"host-1-cpu1"] = spawn
        c.local_procs[b"host-1-cpu1"] = spawn()
        try:
            await c.wait_for_workers(2, 5)
            assert await until(lambda: (0, 1) in c.groups.failures, 3)
            await c.replace_worker(c.by_gpu[1], MODEL)
            assert await until(lambda: (g := c.groups.groups.get((0, 1))) is not None and g.ready, 3)
            assert c.groups.groups[(0, 1)].workers[1].proc is procs[1] and c.groups.failures == {}
        finally:
            await c.close(drain=False)
            rank0.close()
            stop(procs)

    run(main())


class SlowStore(Peer):
    """Rank 0 slow to host the group's store: it answers nothing to HostGroupStore."""

    async def handle(self, msg):
        if not isinstance(msg, P.HostGroupStore):
            await super().handle(msg)


def test_ensure_raises_worker_lost_when_a_member_is_lost_while_rank_0_hosts_the_store(tp_model):
    """Found in review: ensure raised asyncio.CancelledError into its caller (a tp start), whose task then ended as
    'cancelled': nothing failed, nothing logged."""
    async def main():
        c = make_controller(tp_model)
        ep = await c.start()
        peers = await peers_in_order(c, ep, "host-1-cpu0", "host-1-cpu1", peer_cls=SlowStore)
        try:
            await asyncio.sleep(0.2)  # the prewarm's build waits for the store
            t = asyncio.ensure_future(c.groups.ensure((0, 1)))
            await asyncio.sleep(0.2)
            c.hub.lose(c.by_gpu[1], "test: its process died")
            with pytest.raises(WorkerLostError, match="could not be built"):
                await asyncio.wait_for(t, 5)
        finally:
            await c.close(drain=False)
            for p in peers:
                p.close()

    run(main())
