"""Ray as the multi-machine launcher: `warmserve serve --ray [ADDRESS]` and `Cluster(..., ray_address=...)`.

On an existing Ray cluster, one worker per GPU (or ``cpu_workers`` CPU workers on a node without GPUs) is started on
every alive node as a Ray actor, in a placement group pinned to that node. The actor runs the ordinary worker
(`warmserve worker --controller ...`) in its own process, which connects back to the controller's ZeroMQ worker
socket like any remote worker: Ray starts, places and watches the processes; requests never travel through Ray.

Ray's view of an actor feeds the controller's failure handling. Each actor is held by a ``RayWorkerProcess``, which
has the part of ``subprocess.Popen`` the controller uses for its local workers (poll, wait, kill, terminate,
returncode), so Ray workers are watched and restarted like local ones: an actor that dies (its process killed, its
node lost) is seen through ``poll`` at the next heartbeat, and a new actor takes the same placement-group bundle
under the same worker id. A worker whose node Ray reports dead is not started again (its bundle cannot move). The
plan (slots, bundles, the workers' address) is in ``ray_plan``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Callable

from warmserve.config import ClusterConfig, memory_gib_arg, with_worker_page_bytes, worker_cache_args
from warmserve.controller import ray_connect
from warmserve.controller.controller import Controller, check_tp_fits
from warmserve.controller.hub_sockets import remote_curve_hint
from warmserve.controller.launch import worker_log_args
from warmserve.controller.ray_checks import CLOSE_RAY_S, call_within, check_model_paths, ray_error_line
from warmserve.controller.ray_plan import (RayClusterError, RayNode, RayNodeGoneError, RayUnresponsiveError, WorkerSlot,
                                          check_fits, connect_address, node_key, plan_slots)
from warmserve.controller.ray_threads import in_daemon_thread as _in_daemon_thread
from warmserve.errors import InvalidArgumentError
from warmserve.extras import require
from warmserve.policy.gpu_masks import MAX_GPUS_PER_SERVER

log = logging.getLogger("warmserve.controller")

#: How often the node table shown in /stats is read from Ray, seconds.
NODE_REFRESH_S = 2.0
#: How long kill() and wait() with no timeout wait for Ray to confirm an actor's end, seconds (a Popen would wait
#: forever; an actor on a node that vanished may never be confirmed).
END_CONFIRM_S = 30.0
#: How long a worker's start waits for Ray's node table before it goes by the table last read, seconds. Found in
#: review: with Ray's head (the GCS) down, ray.nodes() waited until Ray ended the process (about 60 s).
NODES_READ_S = 2.0
#: How long a worker's start, its Ray calls on a thread of their own, may take before it counts as failed, seconds.
SPAWN_RAY_S = 10.0
#: The returncode of a worker whose actor Ray reports dead (its process or node gone): Ray gives a reason, not a
#: status; the reason is in RayWorkerProcess.exit_reason.
ACTOR_DIED_STATUS = -1
#: Numbers the launchers of this process: each one's worker ids and log files are its own. Found in review: two
#: Clusters of one process both tagged their workers r{pid}, and their logs in a shared log_dir mixed.
_LAUNCHERS = itertools.count(1)


@functools.lru_cache(maxsize=None)
def _actor_class():
    """``_WorkerActor`` as Ray's actor class, made once: Ray sends a class to its head with its first actor, and
    found in review, a new class at each restart waited there for a head that was down."""
    import ray

    return ray.remote(_WorkerActor)


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
        held, keys = [], None
        if curve is not None:
            paths = []
            for name, data in zip(("server.key", "worker.key_secret"), curve):
                if hasattr(os, "memfd_create"):
                    # In this process's memory only: gone with it however it ends. Found in review: files in a
                    # temp dir removed when ``run`` returned stayed on disk, a secret key among them, whenever the
                    # actor was killed (every planned replacement, every lost worker).
                    fd = os.memfd_create(name)
                    held.append(fd)
                    os.write(fd, data)
                    paths.append(f"/proc/self/fd/{fd}")
                else:  # no memfd (not Linux): a private directory, removed when the worker exits
                    keys = keys or tempfile.mkdtemp(prefix="warmserve-curve-")
                    paths.append(os.path.join(keys, name))
                    with open(os.open(paths[-1], os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                        f.write(data)
            argv = [*argv, "--curve-server-key", paths[0], "--curve-secret-key", paths[1]]
        from warmserve.worker import main as worker_main

        parser = argparse.ArgumentParser(prog="warmserve worker")
        worker_main.add_arguments(parser)
        try:
            return worker_main.main(parser.parse_args(argv))
        finally:
            for fd in held:
                os.close(fd)
            if keys is not None:
                shutil.rmtree(keys, ignore_errors=True)


class RayWorkerProcess:
    """One worker's actor, with the part of ``subprocess.Popen`` that the controller uses for local workers."""

    def __init__(self, actor, run_ref, slot: WorkerSlot, node_alive: Callable[[str], bool] | None = None,
                 log_path: str | None = None, connection: tuple[str, str] | None = None):
        """``node_alive``: whether a Ray node (by id) is alive, as last read; None: not asked. ``log_path``: the
        worker's log file on its node; None: its stderr goes to Ray's worker logs. ``connection``: the Ray connection
        the actor was made on (``ray_connect.acquire``); its kill is skipped once that is no longer the current one."""
        self.actor = actor
        self.connection = connection
        self.slot = slot
        self.log_path = log_path
        self._node_alive = node_alive
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
        if self.returncode is None:
            if self._done.done():
                self._settle()
            elif self._node_alive is not None and not self._node_alive(self.slot.node.node_id):
                # Ray fails the run of an actor whose node died, but not of one still waiting for its bundle there:
                # found in review, a restart placed on a node that had just died waited out worker_start_timeout_s.
                self._settle(f"its Ray node {self.slot.node.node_id[:8]} ({self.slot.node.address}) is gone")
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is not None:
            return self.returncode
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

    def _settle(self, gone: str = "") -> None:
        """Record the end: the run's outcome, or ``gone`` (why it is taken as ended without one)."""
        with self._lock:
            if self.returncode is not None:
                return
            if gone:
                self.returncode, self.exit_reason = ACTOR_DIED_STATUS, gone
            else:
                try:
                    self.returncode = int(self._done.result())
                    self.exit_reason = f"the worker exited with status {self.returncode}; {self._where_log()}"
                except Exception as e:  # ray.exceptions.RayActorError and kin: Ray saw the process or its node go
                    self.returncode = ACTOR_DIED_STATUS
                    self.exit_reason = ray_error_line(e)
            if self.returncode == ACTOR_DIED_STATUS and not self._released:
                log.warning("Ray reports the actor of worker %s dead: %s", self.slot.worker_id, self.exit_reason)
        # A worker that exited leaves its actor alive: free the process and its bundle for the successor.
        self.kill()

    def _where_log(self) -> str:
        node = f"node {self.slot.node.node_id[:8]} ({self.slot.node.address})"
        if self.log_path:
            return f"its log: {self.log_path} on {node}"
        return (f"its stderr is in Ray's worker logs on {node}: session_latest/logs/ in Ray's temp dir there, or "
                f"`ray logs actor --id {self.actor_id}` where Ray's dashboard runs")

    def kill(self, wait: bool = False) -> None:
        """Have Ray kill the actor (``poll`` sees the end), on a thread of its own unless ``wait``: ``poll`` runs on
        the controller's event loop, and a Ray call may wait for Ray's head (found in review: a restart's did, and the
        loop stalled until Ray ended the process). ``RayLauncher.close`` waits, within its bound."""
        with self._lock:
            first, self._released = not self._released, True
        if first and wait:
            self._ray_kill()
        elif first:
            threading.Thread(target=self._ray_kill, name="warmserve-ray-kill", daemon=True).start()

    def _ray_kill(self) -> None:
        import ray

        try:
            # Through ray_connect: a kill made late (on its thread) must not outlive or cross its connection.
            if not ray_connect.call_on(self.connection, functools.partial(ray.kill, self.actor, no_restart=True)):
                log.debug("ray.kill(%s) skipped: its Ray connection has closed (the actor ended with its job)",
                          self.actor_id)
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
        #: Its number in this process (``_LAUNCHERS``): in its workers' tag, and its hold on the Ray connection.
        self.number = next(_LAUNCHERS)
        self._connected = False
        #: The Ray connection (``ray_connect.acquire``) its actors are made on; None until ``connect``.
        self.connection: tuple[str, str] | None = None
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
        #: Ids of the nodes alive at the last read, and when (monotonic); the lock: the refresher and spawn both read.
        self._alive: set[str] = set()
        self._nodes_lock = threading.Lock()
        self._read_at = time.monotonic()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._closed = False

    def connect(self) -> None:
        """Connect to Ray, or use this process's connection (``ray_connect``: counted across launchers, checked to be
        the cluster at ``address``, and given up after a deadline)."""
        ray = require("ray", "the Ray launcher (--ray / ray_address)", extra="ray")
        self.connection = ray_connect.acquire(self.number, self.address)
        self._connected = True
        self.driver_ip = ray.util.get_node_ip_address()
        self._read_nodes()
        self._refresher = threading.Thread(target=self._refresh_nodes, name="warmserve-ray-nodes", daemon=True)
        self._refresher.start()

    @property
    def tag(self) -> str:
        """What makes its worker ids its own: this process and this launcher in it (no "-")."""
        return f"r{os.getpid()}w{self.number}"

    def alive_nodes(self) -> list[RayNode]:
        return [RayNode(node_id=n["NodeID"], address=n["NodeManagerAddress"],
                        hostname=n.get("NodeManagerHostname") or n["NodeManagerAddress"],
                        cpus=float(n["Resources"].get("CPU", 0)), gpus=int(n["Resources"].get("GPU", 0)))
                for n in self._nodes if n.get("Alive")]

    def node_alive(self, node_id: str) -> bool:
        """Whether the node is alive in the node table as last read."""
        return any(n["NodeID"] == node_id and n.get("Alive") for n in self._nodes)

    def _read_nodes(self) -> None:
        """Read the node table from Ray now, logging nodes that died since the last read."""
        import ray

        try:
            nodes = ray.nodes()
        except Exception as e:  # the cluster's GCS may be restarting: keep the last view
            log.debug("ray.nodes(): %s", e)
            return
        with self._nodes_lock:
            now = {n["NodeID"] for n in nodes if n.get("Alive")}
            for gone in self._alive - now:
                log.warning("Ray node %s is no longer alive", gone[:8])
            for new in (now - self._alive) if self._nodes else ():  # not at the first read (the start plans those)
                log.warning("Ray node %s joined after the start: no worker of this server runs on it until the server "
                            "is started again", new[:8])
            self._alive, self._nodes, self._read_at = now, nodes, time.monotonic()

    def _read_nodes_within(self, timeout_s: float) -> bool:
        """Read the node table now, on a thread, waiting at most ``timeout_s``; False when the read has not ended by
        then (Ray's head down or restarting): the table last read stands, and the thread is left to Ray."""
        reader = threading.Thread(target=self._read_nodes, name="warmserve-ray-nodes-now", daemon=True)
        reader.start()
        reader.join(timeout_s)
        return not reader.is_alive()

    def _refresh_nodes(self) -> None:
        while not self._stop.wait(NODE_REFRESH_S):
            self._read_nodes()

    def place(self, slots: list[WorkerSlot], timeout_s: float) -> None:
        """Reserve one placement group per node, each bundle on that node (by its node-id label), and wait until
        Ray has placed them all. Bundles a node cannot hold raise RayClusterError first (``check_fits``)."""
        import inspect

        import ray
        from ray.util import placement_group

        check_fits(slots)
        by_node: dict[str, list[WorkerSlot]] = {}
        for s in slots:
            by_node.setdefault(s.node.node_id, []).append(s)
        labels = "bundle_label_selector" in inspect.signature(placement_group).parameters
        for node_id, mine in by_node.items():
            bundles = [s.bundle_resources() for s in mine]
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
                f"Ray could not place the workers' placement groups on nodes {late} within {timeout_s:g} s: their "
                f"CPUs or GPUs are held by other work (`ray status` shows what is free)", nodes=late,
                timeout_s=timeout_s)

    def spawn(self, slot: WorkerSlot, connect: str, **kw) -> RayWorkerProcess:
        """Start the worker of ``slot`` as an actor in its bundle, on the calling thread (``_start_actor`` has the
        arguments); returns at once (Ray starts it)."""
        return self._record(self._start_actor(slot, connect, **kw))

    async def spawn_off_loop(self, slot: WorkerSlot, connect: str, **kw) -> RayWorkerProcess:
        """``spawn`` with its Ray calls on a thread, awaited at most SPAWN_RAY_S (found in review: on the event loop, a
        restart with Ray's head down stalled every request until Ray ended the process). Raises RayUnresponsiveError
        after that; an actor Ray starts later is killed."""
        try:
            proc = await asyncio.wait_for(
                _in_daemon_thread(functools.partial(self._start_actor, slot, connect, **kw), undo=RayWorkerProcess.kill,
                                  name="warmserve-ray-spawn"), SPAWN_RAY_S)
        except asyncio.TimeoutError:
            raise RayUnresponsiveError(
                f"Ray did not start the actor of worker {slot.worker_id} within {SPAWN_RAY_S:g} s (SPAWN_RAY_S): "
                f"its head (the GCS) does not answer. The start counts as failed and is tried again; bring the head "
                f"back (`ray status`), or run Ray's GCS with fault tolerance (an external Redis) so that it restarts "
                f"with its state", worker_id=slot.worker_id, timeout_s=SPAWN_RAY_S) from None
        return self._record(proc)

    def _start_actor(self, slot: WorkerSlot, connect: str, *, memory_bytes: int, heartbeat_interval_s: float,
                     log_dir: str | None = None, curve: tuple[bytes, bytes] | None = None,
                     page_bytes: int = 2 << 20, extra_args: tuple[str, ...] = ()) -> RayWorkerProcess:
        """Ray's part of ``spawn``; ``curve``: the contents of the controller's public certificate and the worker's
        secret one (``LocalCurveKeys.take``), handed to the actor. Raises RayNodeGoneError when the slot's node is no
        longer alive (an actor pinned there waits for its bundle for ever) in the node table read now (found in
        review: the one read every NODE_REFRESH_S showed a node just dead alive), or when Ray does not answer within
        NODES_READ_S, the last."""
        if not self._read_nodes_within(NODES_READ_S):
            log.warning("Ray's node table did not come within %g s (is its head, the GCS, down?): worker %s is "
                        "started by the table read %.1f s ago", NODES_READ_S, slot.worker_id,
                        time.monotonic() - self._read_at)
        if not self.node_alive(slot.node.node_id):
            raise RayNodeGoneError(
                f"the Ray node {slot.node.node_id[:8]} ({slot.node.address}) of worker {slot.worker_id} is no longer "
                f"alive, and its placement-group bundle cannot move: the worker is not started again. Restart the "
                f"server to place workers on the nodes alive now", node_id=slot.node.node_id,
                worker_id=slot.worker_id)
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gpu = slot.device.startswith("cuda")
        argv = ["--controller", connect, "--device", slot.device, "--worker-id", slot.worker_id,
                "--host-name", node_key(slot.node),
                "--heartbeat-interval-s", str(heartbeat_interval_s),
                "--peer-timeout-s", str(max(10.0, 20 * heartbeat_interval_s)), "--page-mib", str(page_bytes >> 20),
                *extra_args]
        env = {}
        if not gpu:
            argv += ["--memory-gib", memory_gib_arg(memory_bytes), "--threads", str(slot.threads)]
            env = {"OMP_NUM_THREADS": str(slot.threads), "CUDA_VISIBLE_DEVICES": ""}
        log_path = os.path.join(log_dir, f"{slot.worker_id}.log") if log_dir else None
        actor = _actor_class().options(
            num_cpus=slot.num_cpus, num_gpus=1 if gpu else 0, max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.groups[slot.node.node_id],
                                                                 placement_group_bundle_index=slot.bundle),
        ).remote()
        return RayWorkerProcess(actor, actor.run.remote(argv, env, curve, log_path), slot, self.node_alive, log_path,
                                self.connection)

    def _record(self, proc: RayWorkerProcess) -> RayWorkerProcess:
        """Note a started actor as its worker's latest (on the caller's thread: the event loop's, for a restart)."""
        slot = proc.slot
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
        """Stop the actors and give the placement groups back; let go of the Ray connection (disconnected when this
        was its last launcher and warmserve connected). Ray's calls get CLOSE_RAY_S in all: with the Ray head gone
        they never return (found in review: close() hung for ever), and what was left is logged."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=NODE_REFRESH_S + 1)
        if not self._connected:
            return
        from ray.util import remove_placement_group

        calls = [(f"ray.kill(actor of {wid})", functools.partial(proc.kill, wait=True))
                 for wid, proc in self.current.items()]
        calls += [(f"remove_placement_group(node {node_id[:8]})", functools.partial(remove_placement_group, pg))
                  for node_id, pg in self.groups.items()]
        calls.append(("the Ray connection's release", functools.partial(ray_connect.release, self.number)))
        left = call_within(calls, CLOSE_RAY_S)
        if left:
            log.warning("Ray did not answer within %.0f s (is its head, the GCS, gone?): left undone: %s. Ray frees "
                        "the actors and placement groups of this process when it ends", CLOSE_RAY_S, "; ".join(left))


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


def check_planned(slots: list[WorkerSlot], n_nodes: int, models, cpu_workers: int, remote_workers: int = 0) -> None:
    """Refuse a plan that cannot serve before any worker starts: no slot at all (saying why), or a model whose tp
    needs more workers on one machine than any node's slots (found in review: checked only once every actor had
    registered, as the local launch does before it spawns). With ``remote_workers``, whose machines are not known
    yet, the tp check waits for them (the controller's, once every worker has registered), as the local launch's."""
    if not slots:
        why = ("cpu_workers is 0 and no node has a GPU" if cpu_workers == 0
               else "no node has a GPU or a CPU for a worker")
        raise RayClusterError(f"the Ray cluster's {n_nodes} alive node(s) get no worker: {why}", nodes=n_nodes,
                              cpu_workers=cpu_workers)
    if not remote_workers:
        per_node = collections.Counter(s.node.node_id for s in slots)
        check_tp_fits(models, min(max(per_node.values()), MAX_GPUS_PER_SERVER))


async def start_ray_cluster(cfg: ClusterConfig, ray_address: str | None, *, history=None,
                            log_dir: str | None = None) -> Controller:
    """Connect to the Ray cluster at ``ray_address`` ("auto" or None: the one this machine belongs to), start the
    controller, a worker actor per GPU (or ``cpu_workers`` per CPU node) on every alive node, and wait until every
    worker (and ``remote_workers`` manual ones) has registered."""
    from warmserve.controller.launch import check_weights_fit, cpu_worker_memory_bytes
    from warmserve.controller.models import controller_model

    if cfg.devices:
        raise InvalidArgumentError(
            f"devices {list(cfg.devices)} name local devices, but with Ray every node's GPUs (or CPU workers) are "
            f"used: leave devices out", devices=list(cfg.devices))
    models = [controller_model(s) for s in cfg.models]  # a bad checkpoint is refused before Ray is involved
    # Absolute here: the actors would resolve a relative path against their raylet's directory (found in review:
    # the logs landed there, and the error named a path relative to the user's directory that did not exist).
    log_dir = os.path.abspath(log_dir) if log_dir else log_dir
    if cfg.host_cache_dir:
        cfg = dataclasses.replace(cfg, host_cache_dir=os.path.abspath(cfg.host_cache_dir))
    launcher = RayLauncher(ray_address)
    # On a daemon thread of its own: ray.init blocks, and on the event loop it stopped timeouts and Ctrl-C (found in
    # review); ``connect`` ends by its deadline, and the thread cannot hold up the process's exit.
    await _in_daemon_thread(launcher.connect, undo=lambda _: launcher.close())
    # the page of the workers plan_slots will start: a GPU worker on each GPU of a node, CPU workers on the others
    cfg = with_worker_page_bytes(cfg, ["cuda" if n.gpus else "cpu" for n in launcher.alive_nodes()])
    controller = None
    try:
        controller = RayController(cfg, models, history=history)
        controller.launcher = launcher
        endpoint = await controller.start()
        nodes = launcher.alive_nodes()
        connect = connect_address(endpoint, launcher.driver_ip, nodes)
        if cfg.remote_workers:
            # As the local launch does: say how to start them, and refuse at once (no wait) when no key of --curve-dir
            # lets them in (found in review: with Ray it only warned, then waited out worker_start_timeout_s).
            keys = (remote_curve_hint(cfg.controller.curve_dir, controller.hub.local_curve[0], cfg.remote_workers)
                    if cfg.controller.curve_dir else "")
            log.warning("waiting up to %g s for %d remote worker(s): start each with `warmserve worker --controller "
                        "%s%s`", cfg.worker_start_timeout_s, cfg.remote_workers, connect, keys)
        # From memory, the files off the disk: found in review, actors read them at each start, so a restart after a
        # temp cleaner's sweep failed for ever, and a controller killed with SIGKILL left the secret key on disk.
        # Every actor, restarts too, gets these.
        curve = controller.hub.curve_keys.take() if controller.hub.curve_keys is not None else None
        slots = plan_slots(nodes, cpu_workers=cfg.cpu_workers, cpu_worker_threads=cfg.cpu_worker_threads,
                           tag=launcher.tag)
        check_planned(slots, len(nodes), models, cfg.cpu_workers, cfg.remote_workers)
        if not cfg.remote_workers and all(s.device.startswith("cpu") for s in slots):
            check_weights_fit(models, cpu_worker_memory_bytes(cfg, models), cfg.worker_page_bytes)
        t0 = time.monotonic()
        await asyncio.to_thread(launcher.place, slots, cfg.worker_start_timeout_s)
        await asyncio.to_thread(check_model_paths, sorted({s.node for s in slots}, key=lambda n: n.node_id),
                                [m.spec.path for m in models], cfg.worker_start_timeout_s)
        mem = cpu_worker_memory_bytes(cfg, models)
        procs = {}
        for slot in slots:
            ident = slot.worker_id.encode()
            spawn = controller.local_spawn[ident] = functools.partial(
                launcher.spawn, slot, connect, memory_bytes=mem,
                heartbeat_interval_s=cfg.controller.heartbeat_interval_s, log_dir=log_dir,
                curve=curve, page_bytes=cfg.worker_page_bytes,
                extra_args=worker_cache_args(cfg) + worker_log_args())
            # What restarts await (WorkerRestarts._start_process): the start with Ray's calls off the event loop.
            spawn.off_loop = functools.partial(launcher.spawn_off_loop, *spawn.args, **spawn.keywords)
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


__all__ = ["RayClusterError", "RayController", "RayNodeGoneError", "RayLauncher", "RayNode", "RayUnresponsiveError",
           "RayWorkerProcess", "WorkerSlot", "connect_address", "plan_slots", "start_ray_cluster"]
