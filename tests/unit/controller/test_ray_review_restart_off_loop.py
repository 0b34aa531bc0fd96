"""A Ray worker's restart while Ray's head (the GCS) does not answer, without a Ray cluster (Ray runs only in a
private network namespace: tests/integration/test_ray_review_gcs_down.py kills a real GCS). The start, the launcher
(spawn, node table, actors' processes) and the controller's restart are the real ones; only Ray is a stand-in: its
node table and its actors' starts wait while the head is "down", as a real ``ray.nodes()`` did (found in review:
the restart ran them on the event loop, which stalled until Ray ended the process), and an actor's run is a scripted
peer. Also ``RayWorkerProcess.kill``: a ``ray.kill`` that waits does not hold up ``poll`` (on the loop)."""

import asyncio
import concurrent.futures
import logging
import sys
import threading
import time
import types

import pytest

from warmserve.config import ClusterConfig, ControllerConfig
from warmserve.controller import ray_launch, restarts
from warmserve.controller.ray_launch import RayLauncher, RayNode, RayWorkerProcess, plan_slots, start_ray_cluster
from warmserve.policy.config import policy_config_from_dict

from controller_harness import Peer, run, until

NODES = [RayNode(c * 28, "127.0.0.1", f"h{i}", 2.0, 0) for i, c in enumerate("ab")]
#: How long the stand-in's head stays "down" after the worker's loss, seconds.
DOWN_S = 3.0


class _StandInRay:
    """``ray`` as the launcher uses it. While ``down`` is set and ``up`` is not, ray.nodes() and an actor's start
    wait (Ray's head gone). An actor's run says Hello as a scripted peer a moment later, unless killed by then."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.down, self.up = threading.Event(), threading.Event()
        self.killed: set[str] = set()
        #: Actor id -> its worker's id, its run's end, the controller's address it was given.
        self.runs: dict[str, tuple[str, concurrent.futures.Future, str]] = {}
        self.peers: dict[str, Peer] = {}
        self.ids = iter(range(1, 1000))
        self.util = types.ModuleType("ray.util")
        self.strategies = types.ModuleType("ray.util.scheduling_strategies")
        self.strategies.PlacementGroupSchedulingStrategy = lambda pg, placement_group_bundle_index: (pg, 0)

    def _wait_while_down(self):
        if self.down.is_set():
            self.up.wait()

    def nodes(self):
        self._wait_while_down()
        return [{"NodeID": n.node_id, "NodeManagerAddress": n.address, "NodeManagerHostname": n.hostname,
                 "Alive": True, "Resources": {"CPU": n.cpus}} for n in NODES]

    def remote(self, cls):
        ray = self

        class ActorClass:
            def options(self, **kw):
                return self

            def remote(self):
                ray._wait_while_down()
                return ray._actor()

        return ActorClass()

    def _actor(self):
        aid = f"{next(self.ids):016x}"

        def start_run(argv, env, keys, log_path):
            wid, endpoint = argv[argv.index("--worker-id") + 1], argv[argv.index("--controller") + 1]
            done = concurrent.futures.Future()
            self.runs[aid] = (wid, done, endpoint)
            self.loop.call_soon_threadsafe(self.loop.call_later, 0.1, self._say_hello, aid)
            return types.SimpleNamespace(future=lambda: done)

        return types.SimpleNamespace(_actor_id=types.SimpleNamespace(hex=lambda: aid), aid=aid,
                                     run=types.SimpleNamespace(remote=start_run))

    def _say_hello(self, aid: str):
        if aid not in self.killed:
            wid, _, endpoint = self.runs[aid]
            self.peers[aid] = Peer(endpoint, wid, pid=int(aid, 16))

    def kill(self, actor, no_restart=True):
        self.killed.add(actor.aid)
        wid, done, _ = self.runs[actor.aid]
        if not done.done():
            done.set_exception(RuntimeError(f"the actor of {wid} was killed"))
        if actor.aid in self.peers:
            self.loop.call_soon_threadsafe(self.peers.pop(actor.aid).close)

    def die(self, aid: str):
        """The actor's process is lost (on the loop): Ray fails its run, its peer goes silent."""
        self.runs[aid][1].set_exception(RuntimeError("the actor died unexpectedly"))
        self.peers.pop(aid).close()


@pytest.fixture
def stand_in_ray(monkeypatch):
    ray = _StandInRay()
    ray.util.scheduling_strategies = ray.strategies
    for name, module in (("ray", ray), ("ray.util", ray.util), ("ray.util.scheduling_strategies", ray.strategies)):
        monkeypatch.setitem(sys.modules, name, module)

    def connect(self):  # as RayLauncher.connect leaves it, without a connection to give back at close
        self._read_nodes()

    def place(self, slots, timeout_s):
        self.slots = list(slots)
        self.groups = {s.node.node_id: f"pg-{s.node.node_id[:4]}" for s in slots}

    monkeypatch.setattr(RayLauncher, "connect", connect)
    monkeypatch.setattr(RayLauncher, "place", place)
    monkeypatch.setattr(restarts, "REAP_WAIT_S", 0.2)  # a scripted peer's actor does not end at Shutdown
    monkeypatch.setattr(ray_launch, "check_model_paths", lambda nodes, paths, timeout_s: None)
    monkeypatch.setattr(ray_launch, "NODES_READ_S", 0.2, raising=False)
    monkeypatch.setattr(ray_launch, "SPAWN_RAY_S", 0.5, raising=False)
    # Ray's actor class is made once per process: this test's stand-in makes its own, and leaves none behind.
    clear = getattr(getattr(ray_launch, "_actor_class", None), "cache_clear", lambda: None)
    clear()
    yield ray
    ray.up.set()
    clear()


def test_a_ray_restart_while_the_head_is_down_keeps_the_loop_running_and_is_tried_again(model, stand_in_ray,
                                                                                       caplog):
    ray = stand_in_ray

    async def main():
        ray.loop = asyncio.get_running_loop()
        cc = ControllerConfig(tick_s=0.05, heartbeat_interval_s=0.05, worker_timeout_s=1.5, restart_backoff_s=0.05,
                              policy_config=policy_config_from_dict({"window_s": 30}))
        cfg = ClusterConfig(models=(model.spec,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                            worker_start_timeout_s=10, controller=cc)
        ctl = await start_ray_cluster(cfg, "127.0.0.1:6379")
        try:
            assert len(ctl.gpu_workers) == 2 and all(w.ready for w in ctl.gpu_workers)
            victim_ident, victim = sorted(ctl.local_procs.items())[1]
            wid = victim_ident.decode()
            ticks = [time.monotonic()]

            async def tick():
                while True:
                    await asyncio.sleep(0.02)
                    ticks.append(time.monotonic())

            ticker = asyncio.ensure_future(tick())
            ray.down.set()
            threading.Timer(DOWN_S, ray.up.set).start()
            ray.die(victim.actor_id)
            back = await until(lambda: ctl.launcher.starts[wid] == 2 and (w := ctl.hub.workers.get(victim_ident))
                               is not None and w.ready, DOWN_S + 8)
            ticker.cancel()
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            assert max(gaps) < 0.5, f"the event loop stalled {max(gaps):.1f} s while Ray's head was down"
            assert back, f"the worker did not come back after the head did: {ctl.launcher.starts}"
            new = ctl.local_procs[victim_ident]
            assert new.actor_id not in ray.killed and ctl.hub.workers[victim_ident].proc is new
            # The actors Ray started after their start had timed out are killed, not left running.
            assert await until(lambda: set(ray.runs) - ray.killed == {p.actor_id for p in ctl.local_procs.values()},
                               3), (set(ray.runs), ray.killed)
        finally:
            await ctl.close(drain=False)

    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        run(main())
    msgs = [r.getMessage() for r in caplog.records]
    assert any("Ray's node table did not come within 0.2 s" in m for m in msgs), msgs
    failed = [m for m in msgs if m.startswith("could not restart")]
    assert failed and all("Ray did not start the actor of worker" in m and "(SPAWN_RAY_S)" in m and "GCS" in m
                          for m in failed), failed
    assert not any(r.exc_info for r in caplog.records if r.getMessage().startswith("could not restart"))


def test_a_ray_kill_that_waits_does_not_hold_up_poll(monkeypatch):
    """``poll`` (on the controller's loop) settles an actor that died and kills it: a ``ray.kill`` waiting for Ray's
    head held the loop (found in review, beside the restart's spawn)."""
    up, kills = threading.Event(), []

    def kill(actor, no_restart=True):
        up.wait(3)
        kills.append(actor)

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(kill=kill))
    (slot,) = plan_slots(NODES[:1], cpu_workers=1, tag="r1")
    done = concurrent.futures.Future()
    done.set_exception(RuntimeError("the actor died unexpectedly"))
    actor = types.SimpleNamespace(_actor_id=types.SimpleNamespace(hex=lambda: "cd" * 8))
    proc = RayWorkerProcess(actor, types.SimpleNamespace(future=lambda: done), slot)
    t0 = time.monotonic()
    try:
        assert proc.poll() == ray_launch.ACTOR_DIED_STATUS
        assert time.monotonic() - t0 < 0.5, f"poll waited {time.monotonic() - t0:.1f} s for ray.kill"
        assert "died unexpectedly" in proc.exit_reason
    finally:
        up.set()
    for _ in range(100):
        if kills:
            break
        time.sleep(0.02)
    assert kills == [actor]  # killed all the same, off the caller's thread
    proc.kill()
    time.sleep(0.05)
    assert kills == [actor]  # once
