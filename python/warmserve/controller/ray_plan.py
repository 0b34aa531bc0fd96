"""The Ray launcher's plan, without Ray: which workers go on which node, under which ids and bundles, whether the
nodes can hold them, and the address the workers connect to (used by ``ray_launch``)."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

from warmserve.controller.restarts import WorkerGoneForGoodError
from warmserve.errors import InvalidArgumentError, WarmServeError, register

log = logging.getLogger("warmserve.controller")


@register
class RayClusterError(WarmServeError):
    """The Ray cluster cannot be reached, or cannot hold the workers asked of it."""


@register
class RayNodeGoneError(RayClusterError, WorkerGoneForGoodError):
    """A worker's Ray node is no longer alive: its placement-group bundle, pinned to that node, can never be placed
    again (a node that rejoins is a new node), so the worker is not started again. Fields: node_id, worker_id."""


@register
class RayUnresponsiveError(RayClusterError):
    """Ray did not start a worker's actor in time (its head, the GCS, down); the start is tried again. Fields:
    worker_id, timeout_s."""


@dataclasses.dataclass(frozen=True)
class RayNode:
    """An alive Ray node, as read from ``ray.nodes()``."""

    node_id: str
    #: The address Ray reaches the node at (NodeManagerAddress): an IP address.
    address: str
    hostname: str
    #: Logical CPUs and GPUs the node offers to Ray (its `Resources`).
    cpus: float
    gpus: int


@dataclasses.dataclass(frozen=True)
class WorkerSlot:
    """One worker's place: a bundle of its node's placement group, and what the worker is told."""

    node: RayNode
    #: Index of the bundle in the node's placement group.
    bundle: int
    #: The worker's --device: "cuda:0" (Ray makes the bundle's GPU the only visible one) or "cpu".
    device: str
    #: Worker id, also its ZeroMQ routing id: HOST-TAG-DEVICE, where HOST names the node.
    worker_id: str
    #: torch threads of a CPU worker (0 for a GPU worker).
    threads: int
    #: The threads were set (cpu_worker_threads), so the bundle reserves them; else they are the node's CPUs
    #: shared and the bundle reserves one CPU (``bundle_resources``).
    threads_given: bool = False

    def bundle_resources(self) -> dict[str, float]:
        """What its bundle (and its actor) takes of the node. A CPU worker with cpu_worker_threads set reserves that
        many CPUs (found in review: it reserved 1 while running 8, and Ray counted the rest free). With the default
        (the node's CPUs shared among its workers) it reserves one: reserving the share would hand one controller
        every CPU of the node, and a second Cluster on it (README: they share one Ray connection) would never be
        placed (found in the session's final review); its threads then compete with what else runs there. A GPU
        worker gets no --threads: Ray sets its OMP_NUM_THREADS to the actor's one CPU."""
        if self.device.startswith("cuda"):
            return {"CPU": 1.0, "GPU": 1.0}
        return {"CPU": float(self.threads) if self.threads_given else 1.0}

    @property
    def num_cpus(self) -> float:
        """The actor's num_cpus: all its bundle's CPUs, so that Ray's count matches what the worker uses."""
        return self.bundle_resources()["CPU"]


def node_key(node: RayNode) -> str:
    """The server name of a node's workers (their --host-name): its host name and node id, since one host may run
    several nodes."""
    return f"{node.hostname}.{node.node_id[:8]}"


def plan_slots(nodes: list[RayNode], *, cpu_workers: int, cpu_worker_threads: int = 0, tag: str) -> list[WorkerSlot]:
    """One slot per GPU of each node; on a node without GPUs, ``cpu_workers`` slots (at most one per logical CPU).
    ``tag``: what makes this controller's worker ids its own (no "-"). A CPU worker's threads: cpu_worker_threads
    (its bundle reserves them), or the node's CPUs shared among its workers (one CPU reserved each:
    ``WorkerSlot.bundle_resources``). Raises RayClusterError when a node cannot hold its slots' bundles
    (``check_fits``): GPUs beyond its CPUs, or CPU workers' threads."""
    slots = []
    for node in nodes:
        if node.gpus:
            devices = [("cuda:0", f"gpu{j}") for j in range(node.gpus)]
        else:
            n = min(cpu_workers, int(node.cpus))
            if n < cpu_workers:
                log.warning("Ray node %s offers %g CPUs: %d CPU workers there instead of %d", node.node_id[:8],
                            node.cpus, n, cpu_workers)
            devices = [("cpu", f"cpu{j}") for j in range(n)]
        threads = cpu_worker_threads or max(1, int(node.cpus) // max(1, len(devices)))
        for j, (device, name) in enumerate(devices):
            slots.append(WorkerSlot(node=node, bundle=j, device=device, worker_id=f"{node_key(node)}-{tag}-{name}",
                                    threads=0 if device.startswith("cuda") else threads,
                                    threads_given=bool(cpu_worker_threads)))
    check_fits(slots)
    return slots


def check_fits(slots: list[WorkerSlot]) -> None:
    """Each node's bundles within what the node offers in all. Found in review: a node with fewer CPUs than GPUs
    got a placement group Ray could never place, and the start waited out worker_start_timeout_s to report the
    CPUs "held by other work"."""
    need: dict[str, dict[str, float]] = {}
    nodes = {}
    for s in slots:
        nodes[s.node.node_id] = s.node
        mine = need.setdefault(s.node.node_id, {})
        for k, v in s.bundle_resources().items():
            mine[k] = mine.get(k, 0.0) + v
    for node_id, mine in need.items():
        node = nodes[node_id]
        has = {"CPU": node.cpus, "GPU": float(node.gpus)}
        short = {k: (v, has[k]) for k, v in mine.items() if v > has[k]}
        cpu_slots = [s for s in slots if s.node.node_id == node_id and not s.device.startswith("cuda")]
        if short and cpu_slots:
            raise _cpu_threads_short(node, cpu_slots, mine["CPU"])
        if short:
            what = ", ".join(f"{v:g} {k}s but it offers {h:g}" for k, (v, h) in short.items())
            raise RayClusterError(
                f"Ray node {node_id[:8]} ({node.address}) cannot hold its workers: one per GPU, each taking 1 CPU "
                f"and its GPU, needs {what}. Give the node at least {mine['CPU']:g} CPUs (`ray start --num-cpus "
                f"{mine['CPU']:g} ...` there) or hide the GPUs warmserve should not use (CUDA_VISIBLE_DEVICES "
                f"before `ray start`)", node_id=node_id, cpus=node.cpus, gpus=node.gpus, needs_cpus=mine["CPU"])


def _cpu_threads_short(node: RayNode, cpu_slots: list[WorkerSlot], needs: float) -> RayClusterError:
    """A node's CPU workers whose threads (each reserved in its bundle) are more than the node's CPUs."""
    n, threads = len(cpu_slots), cpu_slots[0].threads
    fit = int(node.cpus) // n
    return RayClusterError(
        f"Ray node {node.node_id[:8]} ({node.address}) cannot hold its workers: {n} CPU workers of {threads} threads "
        f"each reserve {needs:g} CPUs but it offers {node.cpus:g}. Set fewer cpu_workers (--cpu-workers) or "
        f"cpu_worker_threads (--cpu-worker-threads, at most {fit} for {n} workers here; 0 shares the node's CPUs, "
        f"reserving one each), or give the node more CPUs (`ray start --num-cpus {needs:g} ...` there)",
        node_id=node.node_id, cpus=node.cpus, gpus=node.gpus, needs_cpus=needs, workers=n, threads=threads)


def unbracket(host: str) -> str:
    """An IPv6 literal as written in an address (``[::1]``) without its brackets."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _ip_is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(unbracket(host)).is_loopback
    except ValueError:
        return host == "localhost"


def connect_address(endpoint: str, driver_ip: str, nodes: list[RayNode]) -> str:
    """The address workers on ``nodes`` connect to, from the endpoint the controller bound: a wildcard host becomes
    the controller node's address. An endpoint only this machine can reach (loopback, an ipc:// path) is refused
    when a node on another host would need to reach it."""
    far = sorted({n.address for n in nodes if n.address != driver_ip and not _ip_is_loopback(n.address)})
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":  # ipc:// (a path on this machine): nothing to fill in
        if far:
            raise _unreachable(endpoint, far)
        return endpoint
    host, _, port = rest.rpartition(":")
    host = unbracket(host)
    if host in ("0.0.0.0", "*", "::"):
        host = driver_ip
    if _ip_is_loopback(host) and far:
        raise _unreachable(endpoint, far)
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _unreachable(endpoint: str, far: list[str]) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the controller's worker socket is bound to {endpoint}, which Ray nodes at {', '.join(far)} cannot reach: "
        f"bind a reachable address (--bind tcp://0.0.0.0:PORT) with --curve-dir DIR (or --insecure on a network you "
        f"trust)", endpoint=endpoint, nodes=far)
