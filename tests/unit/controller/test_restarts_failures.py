"""A local worker's restart whose start fails, and a cluster's start meeting a worker that died after its Hello: real
child processes stand for the worker processes, a scripted peer per process speaks for it over ZeroMQ. The Ray
launcher's own spawn runs for real; only Ray's node table is a stand-in (Ray runs only in a private network
namespace, tests/integration/test_ray.py)."""

import asyncio
import functools
import logging

import pytest

from warmserve.controller.ray_launch import RayLauncher, RayNode, plan_slots
from warmserve.errors import WorkerLostError

from controller_harness import Peer, exits_on_shutdown, make_controller, run, sleeper, stop, until

WID = "host-1-cpu0"


def test_a_restart_whose_spawn_raises_any_error_tries_again_and_the_worker_comes_back(model, caplog):
    """Found in review: only an OSError from the starter was retried; Ray's launcher raises Ray's own errors (its
    GCS restarting), and one of those ended the restart for good: the worker never came back."""
    async def main():
        c = make_controller(model, restart_backoff_s=0.02)
        ep = await c.start()
        procs, calls = [], []

        def spawn():
            calls.append(1)
            if len(calls) == 2:  # the restart's first try
                raise RuntimeError("Ray: GCS unavailable")
            p = sleeper()
            p.peer = exits_on_shutdown(Peer(ep, WID, pid=p.pid), p)
            procs.append(p)
            return p

        ident = WID.encode()
        c.local_spawn[ident] = spawn
        c.local_procs[ident] = spawn()
        try:
            await c.wait_for_workers(1, 5)
            first = c.hub.workers[ident]
            procs[0].kill()
            assert await until(lambda: (w := c.hub.workers.get(ident)) is not None and w is not first and w.ready, 8)
            assert len(calls) == 3 and not c.restarting and c.hub.workers[ident].proc is procs[1]
        finally:
            stop(procs)
            await c.close(drain=False)

    with caplog.at_level(logging.ERROR, logger="warmserve.controller"):
        run(main())
    assert any("Ray: GCS unavailable" in (r.exc_text or "") for r in caplog.records), "logged with its traceback"


def _launcher_with(nodes: list[dict]) -> RayLauncher:
    """A launcher as connect() leaves it, with ``nodes`` for Ray's node table (ray.nodes()). It has placed no
    placement group: a spawn that went past the node check would fail on that (KeyError) before reaching Ray."""
    launcher = RayLauncher(None)
    launcher._nodes = nodes
    return launcher


def _node_row(node: RayNode, alive: bool) -> dict:
    return {"NodeID": node.node_id, "NodeManagerAddress": node.address, "NodeManagerHostname": node.hostname,
            "Alive": alive, "Resources": {"CPU": node.cpus}}


def test_a_worker_whose_ray_node_died_is_not_restarted_for_ever(model, caplog):
    """Found in review: a dead node's worker was restarted for good, each new actor pinned to a node id that never
    comes back. Its restart now gives up once: starter dropped, nothing left restarting."""
    async def main():
        c = make_controller(model, restart_backoff_s=0.02)
        ep = await c.start()
        node = RayNode("cd" * 14, "10.0.0.3", "h3", 4.0, 0)
        (slot,) = plan_slots([node], cpu_workers=1, tag="r1")
        launcher = _launcher_with([_node_row(node, alive=True)])
        ray_spawn = functools.partial(launcher.spawn, slot, ep, memory_bytes=1 << 30, heartbeat_interval_s=0.05)
        first = sleeper()  # stands for the worker's first actor
        first.peer = Peer(ep, slot.worker_id, pid=first.pid)
        calls = []

        def spawn():
            calls.append(1)
            return ray_spawn()

        ident = slot.worker_id.encode()
        c.local_spawn[ident] = spawn
        c.local_procs[ident] = first
        try:
            await c.wait_for_workers(1, 5)
            launcher._nodes = [_node_row(node, alive=False)]  # the node died with its worker
            first.kill()
            assert await until(lambda: ident not in c.local_spawn, 5)
            await asyncio.sleep(0.5)  # many back-offs of 0.02 s: no further try
            assert len(calls) == 1 and not c.restarting and ident not in c.local_procs
        finally:
            stop([first])
            await c.close(drain=False)

    with caplog.at_level(logging.ERROR, logger="warmserve.controller"):
        run(main())
    gave_up = [r for r in caplog.records if "is not restarted any more" in r.getMessage()]
    assert len(gave_up) == 1 and "no longer alive" in gave_up[0].getMessage()


def _delayed_spawner(ep, wid, delay_s, procs):
    """A worker whose process says Hello ``delay_s`` after it starts."""
    def spawn():
        p = sleeper()
        procs.append(p)
        asyncio.get_running_loop().call_later(
            delay_s, lambda: setattr(p, "peer", exits_on_shutdown(Peer(ep, wid, pid=p.pid), p)))
        return p
    return spawn


def test_a_start_goes_on_when_a_registered_worker_dies_and_is_restarted_in_time(model):
    """As launch.start_cluster waits (procs: the first processes). Found in review: a worker that registered and then
    died (an OOM) while another still started aborted the whole start, 'exited before it registered'."""
    async def main():
        c = make_controller(model, restart_backoff_s=0.02)
        ep = await c.start()
        procs = []
        for wid, delay_s in (("host-1-cpu0", 0.0), ("host-1-cpu1", 1.5)):  # the second one starts slower
            c.local_spawn[wid.encode()] = _delayed_spawner(ep, wid, delay_s, procs)
            c.local_procs[wid.encode()] = c.local_spawn[wid.encode()]()
        first = list(c.local_procs.values())

        async def crash_first():
            while not any(w.ready for w in c.hub.workers.values()):
                await asyncio.sleep(0.02)
            first[0].kill()

        crash = asyncio.ensure_future(crash_first())
        try:
            await c.wait_for_workers(2, 8, procs=first)
            assert sorted(w.worker_id for w in c.hub.workers.values() if w.ready) == ["host-1-cpu0", "host-1-cpu1"]
            assert c.hub.workers[b"host-1-cpu0"].proc is procs[2]  # the restarted one
        finally:
            crash.cancel()
            await c.close(drain=False)
            stop(procs)

    run(main())


def test_a_start_still_fails_at_once_when_a_worker_exits_before_its_hello(model):
    async def main():
        c = make_controller(model)
        await c.start()
        p = sleeper()  # never says Hello
        c.local_spawn[b"host-1-cpu0"] = lambda: p
        c.local_procs[b"host-1-cpu0"] = p
        p.kill()
        t0 = asyncio.get_running_loop().time()
        try:
            with pytest.raises(WorkerLostError, match="before it registered"):
                await c.wait_for_workers(1, 8, procs=[p])
            assert asyncio.get_running_loop().time() - t0 < 2
        finally:
            await c.close(drain=False)
            stop([p])

    run(main())
