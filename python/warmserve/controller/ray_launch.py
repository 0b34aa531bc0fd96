"""Ray as the multi-machine launcher: `warmserve serve --ray [ADDRESS]` and `Cluster(..., ray_address=...)`.

On an existing Ray cluster, one worker per GPU (or ``cpu_workers`` CPU workers on a node without GPUs) is started on
every alive node as a Ray actor, in a placement group pinned to that node. The actor runs the ordinary worker
(`warmserve worker --controller ...`) in its own process, which connects back to the controller's ZeroMQ worker
socket like any remote worker: Ray starts, places and watches the processes; requests never travel through Ray.

Ray's view of an actor feeds the controller's failure handling. Each actor is held by a ``RayWorkerProcess``, which
has the part of ``subprocess.Popen`` the controller uses for its local workers (poll, wait, kill, terminate,
returncode), so Ray workers are watched and restarted like local ones: an actor that dies (its process killed, its
node lost) is seen through ``poll`` at the next heartbeat, and a new actor takes the same placement-group bundle
under the same worker id.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import functools
import ipaddress
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time

from warmserve.config import ClusterConfig
from warmserve.controller.controller import Controller
from warmserve.controller.restarts import WorkerGoneForGoodError
from warmserve.errors import InvalidArgumentError, WarmServeError, register
from warmserve.extras import require

log = logging.getLogger("warmserve.controller")

#: How often the node table shown in /stats is read from Ray, seconds.
NODE_REFRESH_S = 2.0
#: How long kill() and wait() with no timeout wait for Ray to confirm an actor's end, seconds (a Popen would wait
#: forever; an actor on a node that vanished may never be confirmed).
END_CONFIRM_S = 30.0
#: How long the Ray head given as HOST:PORT gets to accept a TCP connection before connecting is given up, seconds
#: (ray.init retries an unreachable head for minutes).
HEAD_PROBE_TIMEOUT_S = 5.0
#: The returncode of a worker whose actor Ray reports dead (its process or node gone): Ray gives a reason, not a
#: status; the reason is in RayWorkerProcess.exit_reason.
ACTOR_DIED_STATUS = -1


@register
class RayClusterError(WarmServeError):
    """The Ray cluster cannot be reached, or cannot hold the workers asked of it."""


@register
class RayNodeGoneError(RayClusterError, WorkerGoneForGoodError):
    """A worker's Ray node is no longer alive: its placement-group bundle, pinned to that node, can never be placed
    again (a node that rejoins is a new node), so the worker is not started again. Fields: node_id, worker_id."""


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
    #: Worker id, also its ZeroMQ routing id: HOST-TAG-DEVICE, where HOST names the node (workers with the same
    #: HOST are one server to the policy).
    worker_id: str
    #: torch threads of a CPU worker (0 for a GPU worker).
    threads: int


def node_key(node: RayNode) -> str:
    """The server name of a node's workers: its host name and node id, since one host may run several nodes."""
    return f"{node.hostname}.{node.node_id[:8]}"


def plan_slots(nodes: list[RayNode], *, cpu_workers: int, cpu_worker_threads: int = 0, tag: str) -> list[WorkerSlot]:
    """One slot per GPU of each node; on a node without GPUs, ``cpu_workers`` slots (at most one per logical CPU).
    ``tag``: what makes this controller's worker ids its own (no "-"). A CPU worker's threads: cpu_worker_threads,
    or the node's CPUs shared among its workers."""
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
                                    threads=0 if device.startswith("cuda") else threads))
    return slots


def _ip_is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def connect_address(endpoint: str, driver_ip: str, nodes: list[RayNode]) -> str:
    """The address workers on ``nodes`` connect to, from the endpoint the controller bound: a wildcard host becomes
    the controller node's address. A loopback bind is refused when a node on another host would need to reach it."""
    scheme, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if host in ("0.0.0.0", "*", "[::]", "::"):
        host = driver_ip
    if _ip_is_loopback(host):
        far = sorted({n.address for n in nodes if n.address != driver_ip and not _ip_is_loopback(n.address)})
        if far:
            raise InvalidArgumentError(
                f"the controller's worker socket is bound to {endpoint}, which Ray nodes at {', '.join(far)} cannot "
                f"reach: bind a reachable address (--bind tcp://0.0.0.0:PORT) with --curve-dir DIR (or --insecure "
                f"on a network you trust)", endpoint=endpoint, nodes=far)
    return f"{scheme}://{host}:{port}"


class _WorkerActor:
    """The Ray actor of one worker: runs `warmserve worker` in the actor's process until the worker exits. Its
    methods run on the process's main thread (an actor of one thread), where the worker sets its SIGTERM handler."""

    def run(self, argv: list[str], env: dict[str, str], curve: tuple[bytes, bytes] | None,
            log_path: str | None) -> int:
        # Before torch is imported (by the worker): OMP reads its thread count once.
        os.environ.update(env)
        if log_path:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 2)
            os.close(fd)
        keys = None
        if curve is not None:
            # The controller's public key and this worker's secret key, written where the worker reads them (a
            # private directory, removed when the worker exits).
            keys = tempfile.mkdtemp(prefix="warmserve-curve-")
            paths = []
            for name, data in zip(("server.key", "worker.key_secret"), curve):
                path = os.path.join(keys, name)
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                    f.write(data)
                paths.append(path)
            argv = [*argv, "--curve-server-key", paths[0], "--curve-secret-key", paths[1]]
        from warmserve.worker import main as worker_main

        parser = argparse.ArgumentParser(prog="warmserve worker")
        worker_main.add_arguments(parser)
        try:
            return worker_main.main(parser.parse_args(argv))
        finally:
            if keys is not None:
                shutil.rmtree(keys, ignore_errors=True)


class RayWorkerProcess:
    """One worker's actor, with the part of ``subprocess.Popen`` that the controller uses for local workers."""

    def __init__(self, actor, run_ref, slot: WorkerSlot):
        self.actor = actor
        self.slot = slot
        self.actor_id = actor._actor_id.hex()  # the handle has no public accessor; the id is only shown
        #: Ray completes it when ``run`` returns (the worker exited) or fails it when the actor dies.
        self._done: concurrent.futures.Future = run_ref.future()
        self.returncode: int | None = None
        #: The worker's process id on its node, from its Hello (``RayController``); None until then. Read where a
        #: Popen's pid is (the controller's logs of a process that does not end).
        self.pid: int | None = None
        #: Why it ended: the worker's exit status, or Ray's account of the actor's death.
        self.exit_reason = ""
        self._released = False
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        if self.returncode is None and self._done.done():
            self._settle()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        try:
            self._done.result(END_CONFIRM_S if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            if timeout is not None:
                raise subprocess.TimeoutExpired(f"Ray actor {self.actor_id}", timeout) from None
            log.warning("Ray did not confirm the end of actor %s (%s) within %.0f s: taken as ended",
                        self.actor_id, self.slot.worker_id, END_CONFIRM_S)
            with self._lock:
                if self.returncode is None:
                    self.returncode, self.exit_reason = ACTOR_DIED_STATUS, "end not confirmed by Ray"
            return self.returncode
        except Exception:  # the actor's death: read by _settle
            pass
        self._settle()
        return self.returncode

    def _settle(self) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            try:
                self.returncode = int(self._done.result())
                self.exit_reason = f"the worker exited with status {self.returncode}"
            except Exception as e:  # ray.exceptions.RayActorError and kin: Ray saw the process or its node go
                self.returncode = ACTOR_DIED_STATUS
                self.exit_reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                if not self._released:
                    log.warning("Ray reports the actor of worker %s dead: %s", self.slot.worker_id, self.exit_reason)
        # A worker that exited leaves its actor alive: free the process and its bundle for the successor.
        self.kill()

    def kill(self) -> None:
        import ray

        if self._released:
            return
        self._released = True
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception as e:  # already gone, or Ray is shutting down
            log.debug("ray.kill(%s): %s", self.actor_id, e)

    #: Ray offers no SIGTERM for an actor; the controller terminates a worker only once it holds nothing (after
    #: Shutdown, or a planned replacement), so a kill loses nothing.
    terminate = kill


class RayLauncher:
    """The controller's link to Ray: connects, reads the nodes, reserves a placement group per node, starts the
    worker actors, and gives it all back at close."""

    def __init__(self, address: str | None):
        self.address = address or "auto"
        self._owns_connection = False
        self.driver_ip = "127.0.0.1"
        #: Node id -> its placement group.
        self.groups: dict = {}
        self.slots: list[WorkerSlot] = []
        #: Worker id -> its latest actor, the one before (its end is what /stats shows while the latest runs), and
        #: how many actors have been started for it.
        self.current: dict[str, RayWorkerProcess] = {}
        self.previous: dict[str, RayWorkerProcess] = {}
        self.starts: dict[str, int] = {}
        self._nodes: list[dict] = []
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._closed = False

    def connect(self) -> None:
        ray = require("ray", "the Ray launcher (--ray / ray_address)", extra="ray")
        if ray.is_initialized():  # a program that is a Ray driver already: use its connection, leave it open
            log.info("using this process's Ray connection")
        else:
            self._probe_head()
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise RayClusterError(
                    f"cannot connect to a Ray cluster at {self.address!r}: {e}. Start one (`ray start --head` here, "
                    f"`ray start --address HEAD:6379` on the other machines) or pass its address to --ray",
                    address=self.address) from None
            self._owns_connection = True
        self.driver_ip = ray.util.get_node_ip_address()
        self._nodes = ray.nodes()
        self._refresher = threading.Thread(target=self._refresh_nodes, name="warmserve-ray-nodes", daemon=True)
        self._refresher.start()

    def _probe_head(self) -> None:
        """A head given as HOST:PORT must accept a connection now: say so at once rather than after Ray's retries."""
        import socket

        host, sep, port = self.address.rpartition(":")
        if not sep or "://" in self.address or not port.isdigit():
            return  # "auto", or a ray:// client address: Ray finds or checks it
        try:
            socket.create_connection((host, int(port)), timeout=HEAD_PROBE_TIMEOUT_S).close()
        except OSError as e:
            raise RayClusterError(
                f"the Ray head at {self.address} does not accept connections ({e}): check the address "
                f"(`ray status` on the head prints it) or start the cluster (`ray start --head`)",
                address=self.address) from None

    def alive_nodes(self) -> list[RayNode]:
        return [RayNode(node_id=n["NodeID"], address=n["NodeManagerAddress"],
                        hostname=n.get("NodeManagerHostname") or n["NodeManagerAddress"],
                        cpus=float(n["Resources"].get("CPU", 0)), gpus=int(n["Resources"].get("GPU", 0)))
                for n in self._nodes if n.get("Alive")]

    def _refresh_nodes(self) -> None:
        import ray

        alive = {n["NodeID"] for n in self._nodes if n.get("Alive")}
        while not self._stop.wait(NODE_REFRESH_S):
            try:
                nodes = ray.nodes()
            except Exception as e:  # the cluster's GCS may be restarting: keep the last view
                log.debug("ray.nodes(): %s", e)
                continue
            now = {n["NodeID"] for n in nodes if n.get("Alive")}
            for gone in alive - now:
                log.warning("Ray node %s is no longer alive", gone[:8])
            alive, self._nodes = now, nodes

    def place(self, slots: list[WorkerSlot], timeout_s: float) -> None:
        """Reserve one placement group per node, each bundle on that node (by its node-id label), and wait until
        Ray has placed them all."""
        import inspect

        import ray
        from ray.util import placement_group

        by_node: dict[str, list[WorkerSlot]] = {}
        for s in slots:
            by_node.setdefault(s.node.node_id, []).append(s)
        labels = "bundle_label_selector" in inspect.signature(placement_group).parameters
        for node_id, mine in by_node.items():
            bundles = [{"CPU": 1.0, "GPU": 1.0} if s.device.startswith("cuda") else {"CPU": 1.0} for s in mine]
            if labels:
                pg = placement_group(bundles, strategy="STRICT_PACK",
                                     bundle_label_selector=[{"ray.io/node-id": node_id}] * len(bundles))
            else:  # Ray before node labels: the node's address resource (one node per host)
                for b in bundles:
                    b[f"node:{mine[0].node.address}"] = 0.001
                pg = placement_group(bundles, strategy="STRICT_PACK")
            self.groups[node_id] = pg
        self.slots = list(slots)
        pending = {pg.ready(): node_id for node_id, pg in self.groups.items()}
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        if len(ready) < len(pending):
            late = [pending[r][:8] for r in pending if r not in ready]
            raise RayClusterError(
                f"Ray could not place the workers' placement groups on nodes {late} within {timeout_s:.0f} s: their "
                f"CPUs or GPUs are held by other work (`ray status` shows what is free)", nodes=late,
                timeout_s=timeout_s)

    def spawn(self, slot: WorkerSlot, connect: str, *, memory_bytes: int, heartbeat_interval_s: float,
              log_dir: str | None = None, curve: tuple[str, str] | None = None,
              page_bytes: int = 2 << 20) -> RayWorkerProcess:
        """Start the worker of ``slot`` as an actor in its bundle; returns at once (Ray starts it). Raises
        RayNodeGoneError when the slot's node is no longer alive (the node table as last read, every
        NODE_REFRESH_S): an actor pinned there would wait for its bundle for ever."""
        if slot.node.node_id not in {n["NodeID"] for n in self._nodes if n.get("Alive")}:
            raise RayNodeGoneError(
                f"the Ray node {slot.node.node_id[:8]} ({slot.node.address}) of worker {slot.worker_id} is no longer "
                f"alive, and its placement-group bundle cannot move: the worker is not started again. Restart the "
                f"server to place workers on the nodes alive now", node_id=slot.node.node_id,
                worker_id=slot.worker_id)
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gpu = slot.device.startswith("cuda")
        argv = ["--controller", connect, "--device", slot.device, "--worker-id", slot.worker_id,
                "--heartbeat-interval-s", str(heartbeat_interval_s),
                "--peer-timeout-s", str(max(10.0, 20 * heartbeat_interval_s)), "--page-mib", str(page_bytes >> 20)]
        env = {}
        if not gpu:
            argv += ["--memory-gib", f"{memory_bytes / (1 << 30):.4f}", "--threads", str(slot.threads)]
            env = {"OMP_NUM_THREADS": str(slot.threads), "CUDA_VISIBLE_DEVICES": ""}
        keys = None
        if curve is not None:
            keys = tuple(open(path, "rb").read() for path in curve)
        log_path = os.path.join(log_dir, f"{slot.worker_id}.log") if log_dir else None
        actor_cls = ray.remote(_WorkerActor)
        actor = actor_cls.options(
            num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.groups[slot.node.node_id],
                                                                 placement_group_bundle_index=slot.bundle),
        ).remote()
        proc = RayWorkerProcess(actor, actor.run.remote(argv, env, keys, log_path), slot)
        if slot.worker_id in self.current:
            self.previous[slot.worker_id] = self.current[slot.worker_id]
        self.current[slot.worker_id] = proc
        self.starts[slot.worker_id] = self.starts.get(slot.worker_id, 0) + 1
        log.info("started the actor %s of worker %s on Ray node %s", proc.actor_id, slot.worker_id,
                 slot.node.node_id[:8])
        return proc

    def nodes_view(self, workers: dict) -> list[dict]:
        """Ray's nodes and this cluster's workers on each: for /stats. ``workers``: the hub's table by routing id."""
        out = []
        for n in self._nodes:
            mine = []
            for s in self.slots:
                if s.node.node_id != n["NodeID"]:
                    continue
                proc, w = self.current.get(s.worker_id), workers.get(s.worker_id.encode())
                state = "running" if proc is not None and proc.returncode is None else "ended"
                ended = proc if state == "ended" else self.previous.get(s.worker_id)
                mine.append({"worker_id": s.worker_id, "device": s.device, "bundle": s.bundle,
                             "actor_id": proc.actor_id if proc else None, "actor": state,
                             "starts": self.starts.get(s.worker_id, 0), "ready": bool(w and w.ready),
                             "pid": w.pid if w is not None else None,
                             "last_exit": ended.exit_reason if ended is not None else ""})
            res = n.get("Resources", {})
            out.append({"node_id": n["NodeID"], "address": n["NodeManagerAddress"],
                        "hostname": n.get("NodeManagerHostname", ""), "alive": bool(n.get("Alive")),
                        "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0), "workers": mine})
        return out

    def close(self) -> None:
        """Stop the actors and give the placement groups back; disconnect when this launcher connected."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=NODE_REFRESH_S + 5)
        import ray

        if not ray.is_initialized():
            return
        for proc in self.current.values():
            proc.kill()
        from ray.util import remove_placement_group

        for pg in self.groups.values():
            try:
                remove_placement_group(pg)
            except Exception as e:  # the cluster may be going away under us
                log.debug("remove_placement_group: %s", e)
        if self._owns_connection:
            ray.shutdown()


class RayController(Controller):
    """The controller with Ray's nodes in its stats, and Ray given back when it closes."""

    launcher: RayLauncher

    def stats(self) -> dict:
        out = super().stats()
        out["nodes"] = self.launcher.nodes_view(self.hub.workers)
        return out

    def _on_hello(self, ident: bytes, hello) -> None:
        super()._on_hello(ident, hello)
        proc = self.local_procs.get(ident)
        if isinstance(proc, RayWorkerProcess):  # the record just made holds it as its process
            proc.pid = hello.pid

    async def close(self, drain: bool = True) -> None:
        try:
            await super().close(drain)
        finally:
            await asyncio.to_thread(self.launcher.close)


async def start_ray_cluster(cfg: ClusterConfig, ray_address: str | None, *, history=None,
                            log_dir: str | None = None) -> Controller:
    """Connect to the Ray cluster at ``ray_address`` ("auto" or None: the one this machine belongs to), start the
    controller, a worker actor per GPU (or ``cpu_workers`` per CPU node) on every alive node, and wait until every
    worker (and ``remote_workers`` manual ones) has registered."""
    from warmserve.controller.launch import cpu_worker_memory_bytes
    from warmserve.controller.models import controller_model

    if cfg.devices:
        raise InvalidArgumentError(
            f"devices {list(cfg.devices)} name local devices, but with Ray every node's GPUs (or CPU workers) are "
            f"used: leave devices out", devices=list(cfg.devices))
    models = [controller_model(s) for s in cfg.models]  # a bad checkpoint is refused before Ray is involved
    launcher = RayLauncher(ray_address)
    launcher.connect()
    controller = None
    try:
        controller = RayController(cfg, models, history=history)
        controller.launcher = launcher
        endpoint = await controller.start()
        nodes = launcher.alive_nodes()
        connect = connect_address(endpoint, launcher.driver_ip, nodes)
        slots = plan_slots(nodes, cpu_workers=cfg.cpu_workers, cpu_worker_threads=cfg.cpu_worker_threads,
                           tag=f"r{os.getpid()}")
        if not slots:
            raise RayClusterError(f"the Ray cluster's {len(nodes)} alive node(s) offer no GPU and no CPU for a "
                                  f"worker", nodes=len(nodes))
        t0 = time.monotonic()
        await asyncio.to_thread(launcher.place, slots, cfg.worker_start_timeout_s)
        mem = cpu_worker_memory_bytes(cfg, models)
        procs = {}
        for slot in slots:
            ident = slot.worker_id.encode()
            spawn = controller.local_spawn[ident] = functools.partial(
                launcher.spawn, slot, connect, memory_bytes=mem,
                heartbeat_interval_s=cfg.controller.heartbeat_interval_s, log_dir=log_dir,
                curve=controller.hub.local_curve, page_bytes=cfg.worker_page_bytes)
            procs[ident] = spawn()
        controller.local_procs = dict(procs)
        left = max(1.0, cfg.worker_start_timeout_s - (time.monotonic() - t0))
        await controller.wait_for_workers(len(slots) + cfg.remote_workers, left, procs=list(procs.values()))
    except BaseException:
        if controller is not None and controller.hub is not None:
            await controller.close(drain=False)
        else:
            launcher.close()
        raise
    log.info("cluster up on Ray: %d workers on %d nodes, workers join at %s", len(slots),
             len({s.node.node_id for s in slots}), connect)
    return controller


__all__ = ["RayClusterError", "RayController", "RayNodeGoneError", "RayLauncher", "RayNode", "RayWorkerProcess",
           "WorkerSlot", "connect_address", "plan_slots", "start_ray_cluster"]
