"""The Ray launcher's plan, without Ray: which workers go on which node, under which ids, and the address they
connect to (ray_launch.plan_slots, connect_address)."""

import pytest

from warmserve.controller.ray_launch import RayNode, connect_address, node_key, plan_slots
from warmserve.controller.workers import host_of
from warmserve.errors import InvalidArgumentError


def node(i: int, address="10.0.0.1", cpus=8.0, gpus=0) -> RayNode:
    return RayNode(node_id=f"{i:02d}" * 28, address=address, hostname="box-a", cpus=cpus, gpus=gpus)


def test_one_worker_per_gpu_and_the_configured_cpu_workers_on_nodes_without_gpus():
    gpu, cpu = node(1, gpus=4), node(2, cpus=8)
    slots = plan_slots([gpu, cpu], cpu_workers=2, tag="r7")
    assert [(s.node, s.bundle, s.device) for s in slots] == [
        (gpu, 0, "cuda:0"), (gpu, 1, "cuda:0"), (gpu, 2, "cuda:0"), (gpu, 3, "cuda:0"),
        (cpu, 0, "cpu"), (cpu, 1, "cpu")]
    # A CPU worker's threads: the node's CPUs shared, unless given; GPU workers get none.
    assert [s.threads for s in slots] == [0, 0, 0, 0, 4, 4]
    assert [s.threads for s in plan_slots([cpu], cpu_workers=2, cpu_worker_threads=1, tag="r7")] == [1, 1]


def test_worker_ids_are_unique_and_name_their_node_as_the_server():
    a, b = node(1, cpus=4), node(2, cpus=4)  # two nodes on one host (same host name): two servers all the same
    slots = plan_slots([a, b], cpu_workers=2, tag="r7")
    ids = [s.worker_id for s in slots]
    assert len(set(ids)) == 4
    assert [host_of(i) for i in ids] == [node_key(a), node_key(a), node_key(b), node_key(b)]
    assert node_key(a) != node_key(b)


def test_cpu_workers_are_capped_by_the_node_cpus():
    assert len(plan_slots([node(1, cpus=1)], cpu_workers=3, tag="r7")) == 1
    assert plan_slots([node(1, cpus=0)], cpu_workers=3, tag="r7") == []


def test_connect_address_fills_a_wildcard_with_the_controller_node():
    nodes = [node(1, "10.0.0.1"), node(2, "10.0.0.2")]
    assert connect_address("tcp://0.0.0.0:5555", "10.0.0.1", nodes) == "tcp://10.0.0.1:5555"
    assert connect_address("tcp://10.0.0.1:5555", "10.0.0.1", nodes) == "tcp://10.0.0.1:5555"


def test_a_loopback_bind_is_refused_when_a_node_is_on_another_host():
    with pytest.raises(InvalidArgumentError, match="10.0.0.2"):
        connect_address("tcp://127.0.0.1:5555", "10.0.0.1", [node(1, "10.0.0.1"), node(2, "10.0.0.2")])
    # Every node on the controller's host (or on loopback, as in a private network namespace): loopback is fine.
    assert connect_address("tcp://127.0.0.1:41", "10.0.0.1", [node(1, "10.0.0.1")]) == "tcp://127.0.0.1:41"
    assert connect_address("tcp://127.0.0.1:41", "127.0.0.1", [node(1, "127.0.0.1"), node(2, "127.0.0.1")]) \
        == "tcp://127.0.0.1:41"


def test_a_plan_that_cannot_serve_is_refused_before_any_worker_starts():
    """Found in review: a tp the nodes' slots cannot hold was refused only once every actor had registered, and a
    cluster with cpu_workers 0 and no GPU was said to offer "no CPU"."""
    from types import SimpleNamespace

    from warmserve.config import ModelSpec
    from warmserve.controller.ray_launch import RayClusterError, check_planned

    wide = SimpleNamespace(name="big", spec=ModelSpec("/ckpt/big", tp=4))
    narrow = SimpleNamespace(name="small", spec=ModelSpec("/ckpt/small", tp=2))
    slots = plan_slots([node(1, gpus=2), node(2, gpus=2)], cpu_workers=2, tag="r7")
    check_planned(slots, 2, [narrow], cpu_workers=2)
    with pytest.raises(InvalidArgumentError, match="tp=4") as ei:  # 2 workers a node, not 4 on one
        check_planned(slots, 2, [narrow, wide], cpu_workers=2)
    assert ei.value.tp == 4
    with pytest.raises(RayClusterError, match="cpu_workers is 0 and no node has a GPU"):
        check_planned(plan_slots([node(1)], cpu_workers=0, tag="r7"), 1, [narrow], cpu_workers=0)


def test_a_tp_the_remote_workers_may_hold_is_left_to_their_registration():
    """Found in review: with remote_workers, whose machines are not known before they join, a tp wider than the Ray
    nodes' slots was refused; the local launch leaves that check to the controller then."""
    from types import SimpleNamespace

    from warmserve.config import ModelSpec
    from warmserve.controller.ray_launch import check_planned

    wide = SimpleNamespace(name="big", spec=ModelSpec("/ckpt/big", tp=2))
    check_planned(plan_slots([node(1, cpus=1)], cpu_workers=1, tag="r7"), 1, [wide], cpu_workers=1,
                  remote_workers=2)
