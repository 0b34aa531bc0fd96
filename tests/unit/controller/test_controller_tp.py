"""The controller drives a tensor-parallel model through scripted workers on real sockets: its group is built when
the workers join (before any request), each rank gets its own shard and the same group, requests go to rank 0
only, and the loss of a rank stops the instance on the other rank and drops its shard there."""

import asyncio
import dataclasses
import logging

import pytest

from warmserve import protocol as P
from warmserve.config import ModelSpec
from warmserve.controller.models import controller_model
from warmserve.errors import InvalidArgumentError, TimeoutError_
from warmserve.protocol import SamplingParams

from controller_harness import collect, make_controller, peers_in_order, run, two_models


@pytest.fixture(scope="module")
def tp_model(model):
    return dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name=model.name, tp=2))


def _of(peer, kind):
    return [m for m in peer.got if isinstance(m, kind)]


def test_a_tp2_model_gets_its_group_ahead_one_shard_per_rank_and_requests_on_rank_0(tp_model):
    async def main():
        c = make_controller(tp_model)
        ep = await c.start()
        peers = await peers_in_order(c, ep, "host-1-cpu0", "host-1-cpu1")  # peers[0] is GPU 0, rank 0
        for _ in range(100):  # the group is built once both workers are in, before any request
            if c.groups.groups and all(r.ready for r in c.groups.groups.values()):
                break
            await asyncio.sleep(0.02)
        (grp,) = c.groups.groups.values()
        assert grp.ready and grp.path == "prewarmed" and grp.gpus == (0, 1)
        assert len(_of(peers[0], P.HostGroupStore)) == 1 and not _of(peers[1], P.HostGroupStore)
        assert [(j.rank, j.world_size, j.store_port) for p in peers for j in _of(p, P.JoinGroup)] == \
            [(0, 2, 29999), (1, 2, 29999)]

        assert await collect(c.submit_nowait(tp_model.name, [1, 2], SamplingParams(max_tokens=3))) == [5, 6, 7]
        assert [(m.tp, m.rank) for p in peers for m in _of(p, P.Prewarm)] == [(2, 0), (2, 1)]
        acts = [a for p in peers for a in _of(p, P.Activate)]
        assert len(acts) == 2 and {a.group_id for a in acts} == {grp.group_id}
        assert len(_of(peers[0], P.Generate)) == 1 and not _of(peers[1], P.Generate)
        (inst,) = c.stats()["instances"]
        assert inst["gpus"] == [0, 1] and inst["group_id"] == grp.group_id and len(inst["workers"]) == 2
        assert c.metrics.tp_groups_built.get(path="prewarmed") == 1
        await c.close(drain=False)
        for p in peers:
            p.close()

    run(main())


def test_losing_a_rank_stops_the_instance_on_the_other_and_requeues_what_had_not_started(tp_model):
    async def main():
        # The request's timeout stays past the harness's 1.5 s loss detection by 2 s, so the request is rerouted
        # before it times out; the test then waits out the whole timeout again (requeued, it counts from then).
        c = make_controller(tp_model, request_timeout_s=3.5)
        ep = await c.start()
        peers = await peers_in_order(c, ep, "host-1-cpu0", "host-1-cpu1")  # peers[0] is GPU 0, rank 0
        peers[0].hold_generate = True  # rank 0 holds the request: it is in flight when rank 1 goes
        req = c.submit_nowait(tp_model.name, [1, 2], SamplingParams(max_tokens=3))
        while not _of(peers[0], P.Generate):
            await asyncio.sleep(0.01)
        gid = next(iter(c.groups.groups.values())).group_id
        peers[1].silent = True
        while c.metrics.workers_lost.get() < 1:
            await asyncio.sleep(0.02)
        # Rank 0 leaves the dead group (which stops the instance there) and then drops its shard, in that order.
        for _ in range(500):  # up to 10 s: the suite may share the cores with other work
            if _of(peers[0], P.Evict):
                break
            await asyncio.sleep(0.02)
        kinds = [type(m).__name__ for m in peers[0].got if isinstance(m, (P.LeaveGroup, P.Evict))]
        assert kinds[:2] == ["LeaveGroup", "Evict"], kinds
        assert _of(peers[0], P.LeaveGroup)[0].group_id == gid
        assert not c.instances and not c.groups.groups
        # The request had not streamed: it went back to the queue, where no 2-GPU group is left: it times out.
        assert req.reroutes == 1
        with pytest.raises(TimeoutError_):
            await collect(req)
        await c.close(drain=False)
        for p in peers:
            p.close()

    run(main())


async def _one_held_request(tp_model, **ctl):
    """A controller serving the tp-2 model on two peers, rank 0 holding the one request sent: (the controller, the
    peers, the request, its Generate)."""
    c = make_controller(tp_model, request_timeout_s=10.0, **ctl)
    ep = await c.start()
    peers = await peers_in_order(c, ep, "host-1-cpu0", "host-1-cpu1")
    peers[0].hold_generate = True
    req = c.submit_nowait(tp_model.name, [1, 2], SamplingParams(max_tokens=4))
    while not _of(peers[0], P.Generate):
        await asyncio.sleep(0.01)
    (gen,) = _of(peers[0], P.Generate)
    return c, peers, req, gen


def test_a_lost_rank_reported_by_rank_0_starts_its_requests_over_after_their_tokens(tp_model):
    """Found in review: rank 0 answers every request of an instance that lost a rank with WorkerLostError at once,
    before the controller sees any worker lost (or never: ranks that stopped in step stay up), and the requests
    failed where a lost worker's start over. Now they go on elsewhere after their tokens; no worker is lost."""
    from warmserve.errors import WorkerLostError

    async def main():
        c, peers, req, gen = await _one_held_request(tp_model)
        first = c.stats()["instances"][0]["instance_id"]
        await peers[0].send(P.Tokens(id=gen.id, token_ids=[9]))
        await peers[0].send(P.Error.of(gen.id, WorkerLostError("the tensor-parallel instance lost a rank")))
        peers[0].hold_generate = False  # the next instance answers
        assert await collect(req) == [9, 5, 6, 7]
        assert req.reroutes == 1 and req.finish_reason == "length"
        resumed = _of(peers[0], P.Generate)[1]
        assert resumed.output_ids == [9] and resumed.prompt_ids == [1, 2]
        assert c.metrics.resumed.get(model=tp_model.name, why="rank_lost") == 1
        assert c.metrics.workers_lost.get() == 0
        # The broken instance was stopped on both ranks; another one serves.
        assert all(any(d.name == tp_model.name for d in _of(p, P.Deactivate)) for p in peers)
        assert [i["instance_id"] for i in c.stats()["instances"]] != [first]
        await c.close(drain=False)
        for p in peers:
            p.close()

    run(main())


def test_a_tp_that_does_not_split_the_model_is_refused_with_the_sizes_that_do(model):
    with pytest.raises(InvalidArgumentError, match=r"tp=4 does not split 6 attention heads.*use tp in \[1, 2\]"):
        controller_model(ModelSpec(path=model.spec.path, tp=4))


def test_with_a_tp2_model_the_live_policy_never_colocates_tensor_parallel_models(model):
    """The workers run a tp shard alone (a shared activation of one is refused), so the live controller turns
    ``PolicyConfig.colocate_tp`` off where a model has tp > 1 (the policies then never put such an instance beside
    another: tests/unit/policy/test_policy_colocate_tp.py); with only tp-1 models it stays as configured."""
    async def main():
        for c, want in ((two_models(model, "shared"), False), (make_controller(model), True)):
            assert c.policy_config.colocate_tp is want and c.policy.cfg.colocate_tp is want

    run(main())


def test_a_lost_rank_whose_request_is_at_its_loss_limit_fails_it_and_says_so(tp_model, caplog):
    """Found in review: the log said every request started over while those at max_worker_losses_per_request got
    their 503."""
    from warmserve.errors import WorkerLostError

    async def main():
        c, peers, req, gen = await _one_held_request(tp_model, max_worker_losses_per_request=1)
        await peers[0].send(P.Error.of(gen.id, WorkerLostError("the tensor-parallel instance lost a rank")))
        with pytest.raises(WorkerLostError):
            await collect(req)
        await c.close(drain=False)
        for p in peers:
            p.close()

    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        run(main())
    said = [r.getMessage() for r in caplog.records if "lost a rank" in r.getMessage()]
    assert said and "but 1 that lost workers max_worker_losses_per_request (1) times fail" in said[0], said
