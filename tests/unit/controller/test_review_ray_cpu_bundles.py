"""Found in review: a Ray CPU worker ran ``threads`` torch/OMP threads while its placement-group bundle and its
actor reserved 1 CPU, so Ray counted CPUs free that the workers kept busy, and a plan of more threads than a node
has was taken. A CPU worker given cpu_worker_threads now reserves them in its bundle and actor, and a node that cannot
hold them is refused before Ray is asked. With the default threads (the node's CPUs shared among its workers) a
worker still reserves one CPU: reserving the share gave one controller the whole node, and a second Cluster on it was
never placed (the session's final review). No Ray cluster: the plan is pure, and the launcher's placement and actor
start run against a stand-in ``ray``."""

import concurrent.futures
import dataclasses
import sys
import types

import pytest

from warmserve.controller import ray_launch
from warmserve.controller.ray_plan import RayClusterError, RayNode, check_fits, plan_slots


def node(i: int, cpus: float, gpus: int = 0) -> RayNode:
    return RayNode(node_id=f"{i:02d}" * 20, address=f"10.0.0.{i}", hostname="box", cpus=cpus, gpus=gpus)


def test_a_cpu_workers_bundle_reserves_the_cpus_of_the_threads_it_is_given():
    slots = plan_slots([node(1, 16.0)], cpu_workers=2, cpu_worker_threads=8, tag="t")
    assert [s.threads for s in slots] == [8, 8]
    assert [s.bundle_resources() for s in slots] == [{"CPU": 8.0}, {"CPU": 8.0}]
    assert [s.num_cpus for s in slots] == [8.0, 8.0]
    assert [s.bundle_resources() for s in plan_slots([node(1, 16.0)], cpu_workers=2, cpu_worker_threads=3,
                                                     tag="t")] == [{"CPU": 3.0}, {"CPU": 3.0}]


def test_default_threads_share_the_node_and_reserve_one_cpu_each_so_two_controllers_fit():
    a = plan_slots([node(1, 4.0)], cpu_workers=2, tag="a")
    b = plan_slots([node(1, 4.0)], cpu_workers=2, tag="b")
    assert [s.threads for s in a] == [2, 2]  # the node's 4 CPUs shared by its 2 workers
    assert [s.num_cpus for s in a + b] == [1.0] * 4  # both controllers' bundles within the node's 4 CPUs


def test_gpu_slots_still_take_one_cpu_and_their_gpu():
    """A GPU worker gets no --threads: Ray sets its OMP_NUM_THREADS to the actor's num_cpus (1), so its bundle's one
    CPU is what it uses."""
    slots = plan_slots([node(1, 4.0, gpus=2)], cpu_workers=2, tag="t")
    assert [(s.threads, s.bundle_resources(), s.num_cpus) for s in slots] == [(0, {"CPU": 1.0, "GPU": 1.0}, 1.0)] * 2


def test_threads_beyond_a_nodes_cpus_are_refused_naming_the_numbers_and_the_fix():
    with pytest.raises(RayClusterError) as e:
        plan_slots([node(1, 16.0), node(3, 2.0)], cpu_workers=2, cpu_worker_threads=8, tag="t")
    msg = str(e.value)
    assert "03030303 (10.0.0.3)" in msg and "2 CPU workers of 8 threads" in msg and "16 CPUs" in msg, msg
    assert "offers 2" in msg and "cpu_workers" in msg and "cpu_worker_threads" in msg, msg
    assert "at most 1" in msg, msg  # the threads that would fit 2 workers on 2 CPUs
    assert (e.value.needs_cpus, e.value.cpus, e.value.workers, e.value.threads) == (16.0, 2.0, 2, 8)
    # check_fits alone (as RayLauncher.place calls it) refuses the same slots
    slots = plan_slots([node(3, 16.0)], cpu_workers=2, cpu_worker_threads=8, tag="t")
    with pytest.raises(RayClusterError, match="cpu_worker_threads"):
        check_fits([dataclasses.replace(s, node=node(3, 15.0)) for s in slots])


class _StandInRay:
    """``ray`` as ``RayLauncher.place`` and ``_start_actor`` use it: records the bundles and the actor's options."""

    def __init__(self, nodes):
        self.nodes_ = nodes
        self.bundles: list[dict] = []
        self.options: list[dict] = []
        self.runs: list[tuple[list, dict]] = []
        self.util = types.ModuleType("ray.util")
        self.util.placement_group = self.placement_group
        self.util.scheduling_strategies = types.ModuleType("ray.util.scheduling_strategies")
        self.util.scheduling_strategies.PlacementGroupSchedulingStrategy = (
            lambda pg, placement_group_bundle_index: (pg, placement_group_bundle_index))

    def placement_group(self, bundles, strategy, bundle_label_selector=None):
        self.bundles += bundles
        return types.SimpleNamespace(ready=lambda: object())

    def wait(self, refs, num_returns, timeout):
        return refs, []

    def nodes(self):
        return [{"NodeID": n.node_id, "NodeManagerAddress": n.address, "NodeManagerHostname": n.hostname,
                 "Alive": True, "Resources": {"CPU": n.cpus, "GPU": float(n.gpus)}} for n in self.nodes_]

    def remote(self, cls):
        ray = self

        class ActorClass:
            def options(self, **kw):
                ray.options.append(kw)
                return self

            def remote(self):
                def start_run(argv, env, keys, log_path):
                    ray.runs.append((argv, env))
                    return types.SimpleNamespace(future=concurrent.futures.Future)

                run = types.SimpleNamespace(remote=start_run)
                return types.SimpleNamespace(_actor_id=types.SimpleNamespace(hex=lambda: "a"), run=run)

        return ActorClass()


@pytest.fixture
def stand_in_ray(monkeypatch):
    nodes = [node(1, 16.0), node(2, 4.0, gpus=1)]
    ray = _StandInRay(nodes)
    for name, module in (("ray", ray), ("ray.util", ray.util),
                         ("ray.util.scheduling_strategies", ray.util.scheduling_strategies)):
        monkeypatch.setitem(sys.modules, name, module)
    ray_launch._actor_class.cache_clear()  # made once per process: this stand-in's, and none left behind
    yield ray
    ray_launch._actor_class.cache_clear()


def test_the_launcher_places_and_starts_each_worker_with_the_cpus_of_its_threads(stand_in_ray):
    ray = stand_in_ray
    launcher = ray_launch.RayLauncher("127.0.0.1:6379")
    launcher._read_nodes()
    slots = plan_slots(launcher.alive_nodes(), cpu_workers=2, cpu_worker_threads=8, tag="t")
    launcher.place(slots, 5.0)
    for s in slots:
        launcher._start_actor(s, "tcp://10.0.0.1:5555", memory_bytes=1 << 30, heartbeat_interval_s=1.0)
    assert [b["CPU"] for b in ray.bundles] == [8.0, 8.0, 1.0]
    assert [o["num_cpus"] for o in ray.options] == [8.0, 8.0, 1.0]
    assert [o["num_gpus"] for o in ray.options] == [0, 0, 1]
    cpu_runs = ray.runs[:2]
    assert [argv[argv.index("--threads") + 1] for argv, _ in cpu_runs] == ["8", "8"]
    assert [env["OMP_NUM_THREADS"] for _, env in cpu_runs] == ["8", "8"]


def test_a_node_that_joins_after_the_start_is_logged_as_unused(stand_in_ray, caplog):
    """Found in review: a node added to the Ray cluster after the start was listed in /stats with no workers, and
    nothing said so; the nodes of the start are not logged as joining."""
    launcher = ray_launch.RayLauncher("127.0.0.1:6379")
    with caplog.at_level("WARNING", logger="warmserve.controller"):
        launcher._read_nodes()
        assert not [r for r in caplog.records if "joined after the start" in r.getMessage()]
        stand_in_ray.nodes_.append(node(3, 8.0))
        launcher._read_nodes()
    said = [r.getMessage() for r in caplog.records if "joined after the start" in r.getMessage()]
    assert said == [f"Ray node {node(3, 8.0).node_id[:8]} joined after the start: no worker of this server runs on "
                    "it until the server is started again"], said
