"""Process groups for tensor-parallel instances, built ahead on the GPU groups the placement can produce.

Building a group costs a rendezvous and the communicator's set-up (gloo's connections on CPU; NCCL's on GPUs,
which the paper measures in seconds and prewarms for the same reason). Laminar placement puts a ``tp``-way
instance on an aligned block of ``tp`` GPUs of one server in the common case, so those blocks are few: the
controller builds a group for each of them while the workers are idle (``prewarm``), and activating an instance
there binds a group that exists. Any other GPU set (an unaligned group, or a block whose worker was replaced) gets
its group on demand (``ensure``), with the set-up on the start's critical path; both are counted
(``warmserve_tp_groups_built_total{path}``) and timed (``setup_s`` per group, in ``/stats``).

A group dies with any of its workers: ``lost`` drops it and tells the surviving members to leave it (which stops
an instance still bound to it on their side); the next ``prewarm`` builds it again once the block is whole. A worker
whose process is replaced on purpose (a fresh engine) leaves its groups the same way (``drop``), and so do the
members of a group whose instance reported a lost rank with every worker up (``rank_lost``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from warmserve import protocol as P
from warmserve.controller.instance_words import instance_words
from warmserve.errors import WarmServeError, WorkerLostError, register
from warmserve.policy import actions as A

log = logging.getLogger("warmserve.controller")

#: Longest a group's rendezvous may take, seconds (every rank's worker is on this machine's loopback).
JOIN_TIMEOUT_S = 30.0
#: A GPU set whose group could not be built is prewarmed again after GROUP_RETRY_S * 2**(failures - 1) seconds, at
#: most GROUP_RETRY_CAP_S, until a build succeeds or a worker of the set changes (a fresh process on one of its GPUs).
GROUP_RETRY_S = 1.0
GROUP_RETRY_CAP_S = 60.0


@register
class GroupBuildError(WarmServeError):
    """A process group could not be built with every one of its workers up (a communicator's init error: NCCL,
    gloo, a rendezvous that timed out). Not a worker loss: a start that needs the group fails with it, and counts
    as a failed start of its model (``PolicyDriver.instance_failed``: back-off, then the waiting requests fail with
    this cause). ``__cause__`` is the build's own error."""

    http_status = 503


class GroupRecord:
    """One process group: its GPUs (rank i on gpus[i]), its workers, and whether every rank has joined."""

    __slots__ = ("group_id", "gpus", "workers", "ready", "task", "path", "setup_s", "error")

    def __init__(self, group_id: str, gpus: tuple[int, ...], workers: list, path: str):
        self.group_id, self.gpus, self.workers, self.path = group_id, gpus, workers, path
        self.ready = False
        self.task: asyncio.Task | None = None
        #: Seconds from the first request to the last rank's GroupJoined.
        self.setup_s: float | None = None
        #: Why its build failed (None: built, being built, or cancelled: a member was lost or replaced).
        self.error: BaseException | None = None

    def view(self) -> dict:
        return {"group_id": self.group_id, "gpus": list(self.gpus), "ready": self.ready, "path": self.path,
                "setup_s": self.setup_s}


class GroupManager:
    """The controller's process groups, by GPU set. ``ctl``: the Controller (hub, workers by GPU, clock)."""

    def __init__(self, ctl):
        self.ctl = ctl
        self.groups: dict[tuple[int, ...], GroupRecord] = {}
        self._epoch = 0
        #: In every group id: rank 0's rendezvous store lives as long as its worker, and keeps the keys of each group
        #: id it served; a group joined again under one of them meets the old ranks' addresses (gloo: connection
        #: refused, after the group's whole timeout). Ids count up per controller only, so a restarted controller's
        #: first group on the GPUs of a remote worker that outlived the old one was named as the old one's first.
        self._token = secrets.token_hex(3)
        #: GPU set -> (builds failed in a row, when prewarm may try again (loop time), the workers they failed with,
        #: the last build's error). Found in review: a build that failed at once (an NCCL init error) was tried
        #: again on every policy tick, for ever, each try a warning and a LeaveGroup to every member.
        self.failures: dict[tuple[int, ...], tuple[int, float, list, BaseException]] = {}
        self.retry_s, self.retry_cap_s = GROUP_RETRY_S, GROUP_RETRY_CAP_S

    def tp_sizes(self) -> set[int]:
        return {m.spec.tp for m in self.ctl.models.values() if m.spec.tp > 1}

    def prewarm(self) -> None:
        """Start a group for every aligned block of every served tp on every server whose workers are all ready.
        Cheap when nothing is missing: called on each policy tick."""
        sizes = self.tp_sizes()
        if not sizes:
            return
        st = self.ctl.state
        for srv in st.servers:
            ids = [g for g in srv.gpu_ids if not st.gpus[g].gone]
            for tp in sizes:
                for k in range(0, len(ids) - tp + 1, tp):
                    gpus = tuple(ids[k:k + tp])
                    if gpus in self.groups:
                        continue
                    ws = self._workers(gpus)
                    if ws is not None and not self._backing_off(gpus, ws):
                        self._build(gpus, "prewarmed")

    def _backing_off(self, gpus: tuple[int, ...], ws: list) -> bool:
        """Whether the group of ``gpus`` failed to build lately with these very workers ``ws``: prewarm waits."""
        failed = self.failures.get(gpus)
        if failed is None:
            return False
        _, retry_at, with_ws, _ = failed
        if len(with_ws) != len(ws) or any(a is not b for a, b in zip(with_ws, ws)):
            del self.failures[gpus]  # a fresh process on one of its GPUs: what failed may be gone with the old one
            return False
        return asyncio.get_running_loop().time() < retry_at

    async def ensure(self, gpus: tuple[int, ...]) -> GroupRecord:
        """The ready group of ``gpus`` (ranks in this order), built now if none exists or is being built. Raises
        WorkerLostError when a member is gone, GroupBuildError when the build failed with every member up, or
        failed lately with these very workers and its back-off has not run out (nothing is built then). Found in
        review: every failure was reported as a lost worker, which the driver does not count against the model,
        and each start built the group again, back-off or not (41 builds in 8 s, the requests waiting until
        their timeout with no word of the cause)."""
        rec = self.groups.get(gpus)
        if rec is None:
            ws = self._workers(gpus)
            if ws is not None and self._backing_off(gpus, ws):
                raise self._build_error(gpus)
            rec = self._build(gpus, "on_demand")
        # wait, not shield: a build cancelled (_forget: a member lost while rank 0 hosted the store) is a build
        # not done, below, while this caller's own cancellation still raises here. Found in review: shield passed
        # the build's cancellation on, and the tp start's task ended as 'cancelled', failing and logging nothing.
        await asyncio.wait({rec.task})
        if rec.ready:
            return rec
        if rec.error is None or any(w is None or not w.alive for w in rec.workers):
            raise WorkerLostError(f"the process group of GPUs {list(gpus)} could not be built: a worker is gone",
                                  gpus=list(gpus))
        raise self._build_error(gpus, rec.error)

    def _build_error(self, gpus: tuple[int, ...], error: BaseException | None = None) -> GroupBuildError:
        """The typed error of a build of ``gpus`` that failed with every worker up (``error``; None: the last
        build's, while its back-off runs)."""
        n, retry_at, _, last = self.failures.get(gpus, (1, 0.0, [], error))
        error = error if error is not None else last
        wait_s = max(0.0, retry_at - asyncio.get_running_loop().time())
        err = GroupBuildError(
            f"the process group of GPUs {list(gpus)} could not be built with every worker up ({n} failed in a row; "
            f"the next build in {wait_s:.1f} s at the earliest): {type(error).__name__}: {error}; see the workers' "
            f"logs for the communicator's error (NCCL or gloo: network interface, ports, driver versions)",
            gpus=list(gpus), failures=n, retry_in_s=round(wait_s, 3))
        err.__cause__ = error
        return err

    def lost(self, w) -> dict:
        """Worker ``w`` is gone: every group it was in is dead. The other members leave those groups first (which
        stops the instances bound there), then drop the shards of the instances, prewarms and kept weights that
        spanned ``w`` (one socket per worker: in that order). Returns the requests of those instances that ran on
        their rank 0 elsewhere, taken off that worker, by (worker id, request id): the caller ends them (or starts
        them over) with ``w``'s own.

        Nothing is sent from here: the LeaveGroups and Evicts go out once the caller's handling of the loss is over
        (``call_soon``, in the order above). A send that fails loses its worker at once, and that nested loss, found
        in review, routed its requests to ``w``'s instances (still in the driver's state) after the caller had taken
        ``w``'s requests: they were dropped with ``w``, never answered. What the caller sends in the same step goes
        first (Generates to live instances; in a tick, the tick's other actions). A late LeaveGroup cannot end a newer
        group (it names the group by its build's id), and placement puts no second copy of a model where it runs, so
        a late Evict finds no newer load of the model on these workers."""
        ctl = self.ctl
        later = asyncio.get_running_loop().call_soon
        self.drop(w)
        gens, evict = {}, ctl.executor.evict_all
        for iid in [i for i, inst in ctl.instances.items() if w in inst.workers and len(inst.workers) > 1]:
            inst = ctl.instances.pop(iid)
            others = [x for x in inst.workers if x is not w]
            for other in others:
                for gid, req in list(other.gens.items()):
                    if req.instance_id == iid:
                        gens[(other.worker_id, gid)] = other.gens.pop(gid)
            later(evict, others, inst.model)
        for pid in [p for p, pw in ctl.prewarms.items() if w in pw.workers and len(pw.workers) > 1]:
            pw = ctl.prewarms.pop(pid)
            later(evict, [x for x in pw.workers if x is not w], pw.model)
        for k in [k for k in ctl.driver.kept.values() if len(k.gpus) > 1 and w.gpu_id in k.gpus]:
            later(evict, [ctl.by_gpu.get(g) for g in k.gpus if g != w.gpu_id], k.model)
        return gens

    def drop(self, w) -> None:
        """Drop every group ``w`` is in (built, or being built); their other members are told to leave them once
        the caller's handling is over (see ``lost``). The next ``prewarm`` builds them again once every GPU of the
        block has a ready worker."""
        for rec in [rec for rec in self.groups.values() if w in rec.workers]:
            self._forget(rec, but=w)
        for gpus in [g for g, (_, _, ws, _) in self.failures.items() if w in ws]:
            del self.failures[gpus]  # its GPU is gone, or gets a fresh process: a build there starts afresh

    def rank_lost(self, w, req, error: BaseException) -> bool:
        """Rank 0's worker ``w`` answered ``req`` with ``error``. If that is a WorkerLostError of a tensor-parallel
        instance the driver still runs, the instance lost a rank, but the controller may see that rank's worker
        lost only later, or never (ranks that stopped in step stay up): found in review, such requests failed where
        a lost worker's start over. Now every request of the instance starts over elsewhere after its tokens
        (``actions.Migrate``, which also stops the instance), each loss counted against
        ``max_worker_losses_per_request`` as a worker loss is. Returns True then; False: the caller fails ``req``.

        The instance's group goes too, its members told to leave it: a rank reports a lost rank when a collective
        in the group failed, and a gloo group whose collective failed (a rank silent past the group's timeout, its
        worker still up) fails every later one. Found in review: the group stayed ready, so the next start on that
        block activated in it, failed there, and after 3 such failures the model's waiting requests failed. The
        next start builds a new group (``ensure``), or the next ``prewarm`` does."""
        ctl = self.ctl
        live = ctl.instances.get(req.instance_id)
        if (not isinstance(error, WorkerLostError) or live is None or len(live.workers) < 2
                or req.instance_id not in ctl.driver.state.instances):
            return False
        now = ctl.now_s()
        live.rank_lost = True
        failed = 0
        for gid, r in [(g, r) for g, r in w.gens.items() if r.instance_id == req.instance_id]:
            r.reroutes += 1
            if r.reroutes >= ctl.cc.max_worker_losses_per_request:
                del w.gens[gid]
                r.fail(error)
                ctl.driver.request_finished(r.model, r.instance_id, now, route=False, request=r)
                ctl._request_done(r, "worker_lost")
                failed += 1
        # found in review: the line said every request started over while those at the limit got their 503
        log.warning("%s lost a rank (%s): its requests start over elsewhere%s",
                    instance_words(req.instance_id, req.model), error,
                    f", but {failed} that lost workers max_worker_losses_per_request "
                    f"({ctl.cc.max_worker_losses_per_request}) times fail" if failed else "")
        ctl.driver.apply(A.Migrate(req.instance_id), now)  # (its Deactivates go out now: before the LeaveGroups)
        rec = next((r for r in self.groups.values() if r.group_id == live.group_id), None)
        if rec is not None:
            self._forget(rec)
        return True

    def views(self) -> list[dict]:
        return [rec.view() for rec in self.groups.values()]

    # ---- internals ----------------------------------------------------------------------------------------

    def _forget(self, rec: GroupRecord, but=None) -> None:
        """Take ``rec`` out of the table (its build cancelled); its members but ``but`` are told to leave it once
        the caller's handling is over (a send that fails loses its worker: see ``lost``)."""
        if self.groups.get(rec.gpus) is rec:
            del self.groups[rec.gpus]
        if rec.task is not None and not rec.task.done():
            rec.task.cancel()
        later = asyncio.get_running_loop().call_soon
        for other in rec.workers:
            if other is not but and other is not None:
                later(self._leave, other, rec.group_id)

    def _workers(self, gpus):
        ws = [self.ctl.by_gpu.get(g) for g in gpus]
        return ws if all(w is not None and w.alive and w.ready for w in ws) else None

    def _build(self, gpus: tuple[int, ...], path: str) -> GroupRecord:
        self._epoch += 1
        gid = f"tp{len(gpus)}-g{'-'.join(map(str, gpus))}-e{self._epoch}-{self._token}"
        ws = self._workers(gpus) or [self.ctl.by_gpu.get(g) for g in gpus]
        rec = self.groups[gpus] = GroupRecord(gid, gpus, ws, path)
        rec.task = self.ctl._spawn(self._join(rec))
        return rec

    async def _join(self, rec: GroupRecord) -> None:
        hub, loop = self.ctl.hub, asyncio.get_running_loop()
        t0 = loop.time()
        try:
            if any(w is None or not w.alive for w in rec.workers):
                raise WorkerLostError(f"a worker of GPUs {list(rec.gpus)} is gone", gpus=list(rec.gpus))
            port = (await hub.call(rec.workers[0], P.HostGroupStore(id=hub.next_id()), JOIN_TIMEOUT_S)).port
            # Sent to every member here, with no await between: each worker joins its groups one at a time in the order
            # they came (worker/tp_groups.py, GroupTable), and NCCL needs that order to be the same on every worker.
            msgs = [P.JoinGroup(id=hub.next_id(), group_id=rec.group_id, rank=r, world_size=len(rec.gpus),
                                store_port=port) for r in range(len(rec.workers))]
            futs = []
            for w, m in zip(rec.workers, msgs):
                futs.append(hub.start_call(w, m))
                if futs[-1].done():  # the send found the worker gone (and lost() ran): tell no one else to join
                    break
            try:
                await asyncio.gather(*(hub.wait(w, m, f, JOIN_TIMEOUT_S + 5)
                                       for w, m, f in zip(rec.workers, msgs, futs)))
            finally:
                for w, m in zip(rec.workers, msgs):
                    w.calls.pop(m.id, None)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            n = self.failures.get(rec.gpus, (0,))[0] + 1
            delay_s = min(self.retry_cap_s, self.retry_s * 2 ** min(n - 1, 60))
            self.failures[rec.gpus] = (n, loop.time() + delay_s, list(rec.workers), e)
            rec.error = e
            log.warning("process group %s on GPUs %s not built (%d failed in a row; prewarmed again in %.0f s at the "
                        "earliest): %s", rec.group_id, list(rec.gpus), n, delay_s, e)
            if self.groups.get(rec.gpus) is rec:
                del self.groups[rec.gpus]
            for w in rec.workers:
                if w is not None and w.alive:
                    self._fire(w, P.LeaveGroup(id=hub.next_id(), group_id=rec.group_id))
            return
        rec.setup_s = loop.time() - t0
        rec.ready = True
        self.failures.pop(rec.gpus, None)
        self.ctl.metrics.tp_groups_built.inc(path=rec.path)
        log.info("process group %s ready on GPUs %s (%s, %.3f s)", rec.group_id, list(rec.gpus), rec.path,
                 rec.setup_s)

    def _leave(self, w, group_id: str) -> None:
        if w.alive:
            self._fire(w, P.LeaveGroup(id=self.ctl.hub.next_id(), group_id=group_id))

    def _fire(self, w, msg) -> None:
        from warmserve.controller.executor import fire

        fire(self.ctl.hub, w, msg)
