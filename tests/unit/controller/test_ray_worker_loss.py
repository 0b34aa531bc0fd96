"""The Ray launcher's side of a worker's loss, without a Ray cluster (Ray runs only in a private network namespace:
tests/integration/test_ray.py). The launcher and ``RayWorkerProcess`` are the real ones; Ray's node table, an
actor's handle, its run's future (never done: Ray never confirms the end) and ``ray.kill`` are stand-ins."""

import asyncio
import concurrent.futures
import dataclasses
import logging
import sys
import types

import pytest
import zmq

from warmserve.config import ClusterConfig, ControllerConfig
from warmserve.controller import restarts as reap_module
from warmserve.controller.ray_launch import (RayController, RayLauncher, RayNode, RayNodeGoneError, RayWorkerProcess,
                                             plan_slots)
from warmserve.controller.restarts import WorkerGoneForGoodError
from warmserve.policy.config import policy_config_from_dict

from controller_harness import Peer, make_controller, run, until

NODE = RayNode("ab" * 14, "10.0.0.2", "h2", 4.0, 0)
(SLOT,) = plan_slots([NODE], cpu_workers=1, tag="r1")


@pytest.fixture
def ray_kills(monkeypatch):
    """``ray`` as RayWorkerProcess and RayLauncher.close import it: kill() recorded, never confirmed; no Ray up."""
    kills = []
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(
        kill=lambda actor, no_restart=True: kills.append(actor), is_initialized=lambda: False))
    return kills


class _RunRef:
    def future(self):
        return concurrent.futures.Future()  # never done: Ray does not confirm the actor's end


def _ray_proc() -> RayWorkerProcess:
    actor = types.SimpleNamespace(_actor_id=types.SimpleNamespace(hex=lambda: "cd" * 8))
    return RayWorkerProcess(actor, _RunRef(), SLOT)


def test_ray_spawn_on_a_node_no_longer_alive_raises_a_permanent_error():
    launcher = RayLauncher(None)
    launcher._nodes = [{"NodeID": NODE.node_id, "NodeManagerAddress": NODE.address, "Alive": False,
                        "Resources": {"CPU": NODE.cpus}}]
    with pytest.raises(RayNodeGoneError) as e:
        launcher.spawn(SLOT, "tcp://10.0.0.1:5555", memory_bytes=1 << 30, heartbeat_interval_s=0.5)
    assert isinstance(e.value, WorkerGoneForGoodError)
    assert e.value.node_id == NODE.node_id and e.value.worker_id == SLOT.worker_id
    assert "Restart the server" in str(e.value)


def test_a_ray_worker_whose_end_is_never_confirmed_is_waited_for_then_left_at_close(model, ray_kills, caplog):
    """Found in review: RayWorkerProcess had no pid, which restarts._gone logs for a process that does not end:
    the AttributeError ended the restart."""
    async def main():
        c = make_controller(model)
        c.config = dataclasses.replace(c.config, worker_start_timeout_s=0.2)
        await c.start()
        proc = _ray_proc()
        gone = asyncio.ensure_future(c._gone(proc))
        try:
            assert await until(lambda: any("did not exit within" in r.getMessage() for r in caplog.records), 3)
            assert not gone.done() and ray_kills
            c.closing = True
            assert await asyncio.wait_for(gone, 2) is False
        finally:
            c.closing = False
            await c.close(drain=False)

    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        run(main())
    assert any("process None did not exit after SIGKILL" in r.getMessage() for r in caplog.records)


def test_close_with_a_ray_worker_never_confirmed_ends_and_frees_the_port(model, ray_kills, monkeypatch, caplog):
    """Found in review: _reap read the missing pid, close() raised and left the workers' socket bound."""
    monkeypatch.setattr(reap_module, "REAP_WAIT_S", 0.2)

    async def main():
        c = make_controller(model, bind="tcp://127.0.0.1:0")  # a TCP port, to bind again below
        ep = await c.start()
        c.local_procs[SLOT.worker_id.encode()] = _ray_proc()
        await asyncio.wait_for(c.close(drain=False), 10)
        s = zmq.Context.instance().socket(zmq.ROUTER)
        try:
            s.bind(ep)  # the port is free again
        finally:
            s.close(0)

    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        run(main())
    assert any("worker process None did not exit" in r.getMessage() for r in caplog.records)


def test_a_ray_worker_process_takes_its_pid_from_the_workers_hello(model, ray_kills):
    async def main():
        cc = ControllerConfig(tick_s=0.05, heartbeat_interval_s=0.05, worker_timeout_s=1.5,
                              policy_config=policy_config_from_dict({"window_s": 30}))
        c = RayController(ClusterConfig(models=(model.spec,), controller=cc), [model])
        c.launcher = RayLauncher(None)
        ep = await c.start()
        proc = _ray_proc()
        ident = SLOT.worker_id.encode()
        c.local_procs[ident] = proc
        assert proc.pid is None
        peer = Peer(ep, SLOT.worker_id, pid=4242)
        try:
            await c.wait_for_workers(1, 5)
            assert c.hub.workers[ident].proc is proc and proc.pid == 4242
        finally:
            peer.close()
            c.local_procs.clear()
            await c.close(drain=False)

    run(main())
