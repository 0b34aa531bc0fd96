"""The process groups a worker belongs to (``GroupTable``): joins queued and built one at a time, and the store it
hosts for the groups it leads. Split from worker/tp.py, whose module doc tells how tensor-parallel instances use
them."""

from __future__ import annotations

import collections
import logging
import threading
import time

from .. import errors
from .. import protocol as P

log = logging.getLogger("warmserve.worker")


class GroupTable:
    """The process groups a worker belongs to, the store it hosts for those it leads, and joins queued or running.

    Joins run one at a time, in the order they came. NCCL builds a communicator collectively, and two ranks that
    share GPUs must build theirs in the same order (found in review: groups built at once on threads of their own
    could reach two GPUs in different orders); the controller sends a group's JoinGroups to all its workers at
    once, so every worker receives any two groups in the same order, and the earliest group still pending has
    every member at its head. The price: a join whose peer never comes holds the ones behind it until the group is
    left (the controller leaves it as soon as it loses a member) or, failing that, up to its timeout.
    """

    def __init__(self, device: str, emit):
        self.device = device
        self.emit = emit
        self.groups: dict[str, object] = {}
        self._store = None
        #: Joins waiting their turn, in arrival order: (peer, JoinGroup, arrival time).
        self._queue: collections.deque = collections.deque()
        #: The join under way: (peer, JoinGroup, arrival time, thread, result box); None when none is.
        self._running: tuple | None = None
        #: Groups left while their join ran: built, then dropped.
        self._left: set[str] = set()

    def host_store(self) -> int:
        from ..engine.parallel import host_store

        if self._store is None:
            self._store = host_store()
        return int(self._store.port)

    def join(self, peer, msg: P.JoinGroup) -> None:
        if msg.group_id in self.groups or msg.group_id in self._pending():
            raise errors.ModelStateError(f"this worker is already in (or joining) group {msg.group_id!r}: leave it "
                                         "first", group_id=msg.group_id)
        if not 0 <= msg.rank < msg.world_size or msg.world_size < 2:
            raise errors.InvalidArgumentError(
                f"rank {msg.rank} of {msg.world_size}: a group has 2 or more ranks, numbered from 0",
                rank=msg.rank, world_size=msg.world_size)
        if not 0 < msg.timeout_s <= 3600 or not 0 < msg.store_port < 65536:
            raise errors.InvalidArgumentError(
                f"timeout_s {msg.timeout_s} (0-3600 s) or store_port {msg.store_port} out of range",
                timeout_s=msg.timeout_s, store_port=msg.store_port)
        self._queue.append((peer, msg, time.perf_counter()))
        self._start_next()

    def _pending(self) -> list[str]:
        run = [self._running[1].group_id] if self._running is not None else []
        return run + [m.group_id for _, m, _ in self._queue]

    def _start_next(self) -> None:
        if self._running is not None or not self._queue:
            return
        peer, msg, t0 = self._queue.popleft()
        box: dict = {"cancel": threading.Event()}

        def run():
            from ..engine.parallel import ParallelGroup

            try:
                box["group"] = ParallelGroup.join(msg.group_id, msg.rank, msg.world_size, msg.store_port,
                                                  self.device, msg.timeout_s, box["cancel"])
            except Exception as e:  # answered to the asker from poll(): its text only. The exception's traceback
                # holds the failed join's frames, and with them its half-built gloo group and that group's
                # listening socket, for as long as it is kept (found in review: one per failed join, for good)
                box["error"] = f"{type(e).__name__}: {e}"

        t = threading.Thread(target=run, name=f"join-{msg.group_id}", daemon=True)
        t.start()  # before _running is set: a thread that cannot start fails this JoinGroup once, in join()
        self._running = (peer, msg, t0, t, box)

    def poll(self) -> None:
        if self._running is None or self._running[3].is_alive():
            return
        peer, msg, t0, _, box = self._running
        self._running = None
        gid = msg.group_id
        if gid in self._left:
            self._left.discard(gid)
            self.emit(peer, P.Error.of(msg.id, errors.ModelStateError(
                f"group {gid!r} was left while this worker joined it: it is dropped", group_id=gid)))
        elif "group" in box:
            self.groups[gid] = box["group"]
            self.emit(peer, P.GroupJoined(id=msg.id, group_id=gid, setup_s=time.perf_counter() - t0,
                                          backend=box["group"].backend))
        else:
            self.emit(peer, P.Error.of(msg.id, errors.WorkerLostError(
                f"could not join group {gid!r}: {box.get('error')}; a rank did not come (its worker is "
                "gone or slow): the controller builds the group again when its workers are back", group_id=gid)))
        self._start_next()

    def get(self, group_id: str):
        g = self.groups.get(group_id)
        if g is None:
            raise errors.ModelStateError(
                f"this worker is not in group {group_id!r} (it is in {sorted(self.groups)}): JoinGroup first",
                group_id=group_id, groups=sorted(self.groups))
        return g

    def leave(self, group_id: str) -> None:
        """Leave a group, or give up joining it: a queued join is answered now, one under way when it ends (at once
        while its ranks are awaited: the controller leaves a group whose member was lost while it was built, and
        the joins queued behind it wait for this one)."""
        self.groups.pop(group_id, None)
        for item in [q for q in self._queue if q[1].group_id == group_id]:
            self._queue.remove(item)
            self.emit(item[0], P.Error.of(item[1].id, errors.ModelStateError(
                f"group {group_id!r} was left before this worker's turn to join it", group_id=group_id)))
        if self._running is not None and self._running[1].group_id == group_id:
            self._left.add(group_id)
            self._running[4]["cancel"].set()

    def joining(self) -> bool:
        return self._running is not None or bool(self._queue)

    def close(self) -> None:
        """The worker is closing: answer the joins still queued or under way (the groups are dropped)."""
        pending = list(self._queue) + ([self._running[:3]] if self._running is not None else [])
        if self._running is not None:
            self._running[4]["cancel"].set()  # its thread ends soon after; its group, if built, is dropped
        self._queue.clear()
        self._running = None
        for peer, msg, _ in pending:
            self.emit(peer, P.Error.of(msg.id, errors.ModelStateError(
                f"the worker closed before it joined group {msg.group_id!r}", group_id=msg.group_id)))
        self.groups.clear()
