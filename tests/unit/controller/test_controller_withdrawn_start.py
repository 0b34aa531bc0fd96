"""A start whose decision the driver withdrew while its weights loaded (the instance stopped, its weights kept as a
prewarm): scripted peers on real ZeroMQ sockets that keep a worker's model table (controller_harness.TablePeer), so
what the start leaves on the worker can be read."""

import asyncio
import contextlib
import dataclasses

from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.errors import WarmServeError
from warmserve.policy import actions as A
from warmserve.policy.config import policy_config_from_dict

from controller_harness import MODEL, GroupPeer, TablePeer, make_controller, run, until


class TableGroupPeer(TablePeer, GroupPeer):
    """A TablePeer that also refuses an Activate in a group it never joined."""


class FailingLoadPeer(TablePeer):
    """A TablePeer whose loads fail when they end (a checkpoint that turns out corrupt)."""

    def _loaded(self, msg: P.Prewarm) -> None:
        if self._loads.get(msg.name, (None,))[0] == msg.id:
            del self._loads[msg.name]
            del self.models[msg.name]
            asyncio.get_running_loop().create_task(self.send(P.Error.of(msg.id, WarmServeError("corrupt shard"))))


async def _ready_workers(c: Controller, n: int) -> None:
    """Workers admitted without starting the policy (c.wait_for_workers would): the test applies the actions."""
    assert await until(lambda: sum(w.ready for w in c.gpu_workers) >= n, 5)


@contextlib.asynccontextmanager
async def _one_worker(model, peer_cls, load_s: float):
    """A started controller with one admitted scripted worker (peer_cls, loads taking load_s), closed at the end."""
    c = make_controller(model)
    ep = await c.start()
    peer = peer_cls(ep, "host-1-cpu0", load_s=load_s)
    try:
        await _ready_workers(c, 1)
        yield c, peer
    finally:
        await c.close(drain=False)
        peer.close()


async def _stop_while_loading(c: Controller, peer) -> float:
    """Start i-1 (a cold load into the running worker), then, while it loads, stop it (scaled in: nothing in flight,
    it stops at once) keeping its weights as prewarm p-1. Returns the time of the stop."""
    c.driver.apply(A.StartInstance("i-1", MODEL, (0,)), c.now_s())
    assert await until(lambda: peer.models == {MODEL: "loading"}, 1)
    now = c.now_s()
    c.driver.apply(A.StopInstance("i-1"), now)
    c.driver.apply(A.Prewarm("p-1", MODEL, (0,), 1.0, kept_from="i-1"), now)
    return now


def _activates(peer) -> int:
    return sum(isinstance(m, P.Activate) for m in peer.got)


def test_a_start_stopped_while_it_loads_is_not_activated(model):
    """The start's task sent its Activate once the load ended, without looking whether the instance was still
    wanted: stopped meanwhile, its weights kept as a prewarm (Prewarm kept_from), the model ran on the worker while
    the driver held a prewarm there, and the start made from that prewarm was refused (the model is running)."""
    async def main():
        async with _one_worker(model, TablePeer, 0.6) as (c, peer):
            await _stop_while_loading(c, peer)
            assert "p-1" in c.state.prewarms and "i-1" not in c.state.instances
            await asyncio.sleep(0.9)  # past the end of the load
            assert _activates(peer) == 0 and peer.models == {MODEL: "prewarmed"}, peer.models
            # The prewarm it left serves the next start of the model.
            c.driver.apply(A.StartInstance("i-2", MODEL, (0,), prewarm_id="p-1"), c.now_s())
            assert await until(lambda: "i-2" in c.state.instances and c.state.instances["i-2"].ready, 2), \
                "the start from the kept prewarm failed"
            assert peer.models == {MODEL: "running"}

    run(main())


def test_a_start_taken_from_a_kept_prewarm_waits_for_the_load_it_inherited(model):
    """The kept prewarm of a start stopped mid-load counted as loaded: a start made from it before the load ended
    sent its Activate at once, which the worker refused (still loading), and the start failed."""
    async def main():
        async with _one_worker(model, TablePeer, 0.6) as (c, peer):
            now = await _stop_while_loading(c, peer)
            c.driver.apply(A.StartInstance("i-2", MODEL, (0,), prewarm_id="p-1"), now)  # the load still runs
            assert await until(lambda: "i-2" in c.state.instances and c.state.instances["i-2"].ready, 2), \
                "the start from the kept prewarm failed"
            assert _activates(peer) == 1 and peer.models == {MODEL: "running"}

    run(main())


def test_a_kept_prewarm_whose_inherited_load_fails_leaves_the_state(model):
    """The kept prewarm of a start stopped mid-load stayed in the driver's state as loaded when that load failed:
    reserved memory with nothing behind it, until a start from it failed."""
    async def main():
        async with _one_worker(model, FailingLoadPeer, 0.4) as (c, peer):
            await _stop_while_loading(c, peer)
            assert await until(lambda: "p-1" not in c.state.prewarms, 2), "the failed load's prewarm stays"
            assert "p-1" not in c.prewarms and peer.models == {} and _activates(peer) == 0

    run(main())


def test_a_tp2_start_stopped_while_it_loads_is_not_activated(model):
    """The same for a tensor-parallel start: every rank activated in the group once the shards were loaded."""
    async def main():
        b = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="b", tp=2))
        cc = ControllerConfig(tick_s=0.05, heartbeat_interval_s=0.05, worker_timeout_s=1.5,
                              policy_config=policy_config_from_dict({"window_s": 30}))
        c = Controller(ClusterConfig(models=(b.spec,), controller=cc), [b])
        ep = await c.start()
        peers = []
        try:
            for i, wid in enumerate(["host-1-cpu0", "host-1-cpu1"]):  # admitted in order: GPU ids 0, 1
                peers.append(TableGroupPeer(ep, wid, load_s=0.6))
                await _ready_workers(c, i + 1)
            c.driver.apply(A.StartInstance("i-1", "b", (0, 1)), c.now_s())
            assert await until(lambda: all(p.models == {"b": "loading"} for p in peers), 2)
            now = c.now_s()
            c.driver.apply(A.StopInstance("i-1"), now)
            c.driver.apply(A.Prewarm("p-1", "b", (0, 1), 1.0, kept_from="i-1"), now)
            await asyncio.sleep(0.9)
            assert [_activates(p) for p in peers] == [0, 0]
            assert [p.models for p in peers] == [{"b": "prewarmed"}] * 2
            c.driver.apply(A.StartInstance("i-2", "b", (0, 1), prewarm_id="p-1"), c.now_s())
            assert await until(lambda: "i-2" in c.state.instances and c.state.instances["i-2"].ready, 2)
            assert [p.models for p in peers] == [{"b": "running"}] * 2
        finally:
            await c.close(drain=False)
            for p in peers:
                p.close()

    run(main())
