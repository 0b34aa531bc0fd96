"""The live executor: the policy driver's decisions carried out on real workers over ZeroMQ.

Every send to a worker happens synchronously, in the order the driver applies the actions, so one worker sees them in
that order (ZeroMQ keeps per-peer order). The only waits are a start's load and activation (and, for a cold start
without a warm engine, a fresh worker process first: ``_fresh_engine``), run as tasks, and the back-off before a failed
Deactivate is sent again (``deactivate``). A live worker holds one device: one policy GPU, whose id
(``WorkerRecord.gpu_id``) never changes, even when its process is replaced by a fresh one. A tensor-parallel instance
(or prewarm) on GPUs ``gpus`` has one shard per worker, rank i on the i-th GPU of ``gpus``; rank 0's worker (the leader)
takes its requests (worker/tp.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from warmserve import protocol as P
from warmserve.controller import expiry
from warmserve.controller.instance_words import instance_words
from warmserve.controller.prewarms import LivePrewarm, start_words, tracked_copies
from warmserve.controller.workers import WorkerRecord
from warmserve.errors import InvalidArgumentError, ModelStateError, TimeoutError_, UnknownModelError, WorkerLostError
from warmserve.geometry import PAGE_BYTES, align_up, pages_for
from warmserve.policy import actions as A
from warmserve.policy.driver import KeptWeights
from warmserve.policy.state import InstanceState, PrewarmState, kv_blocks_for

log = logging.getLogger("warmserve.controller")

#: Longest a checkpoint load on a worker may take before the start counts as failed, seconds.
LOAD_TIMEOUT_S = 600.0
#: Longest a control call (evict, activate, deactivate, KV target, stats) may take, seconds.
CALL_TIMEOUT_S = 60.0
#: Tries in all of a Deactivate the worker answers with an error (``LiveExecutor.deactivate``); seconds before the
#: second, doubled before each next one.
DEACTIVATE_TRIES = 3
DEACTIVATE_RETRY_S = 0.1


def kv_counts(kv: P.KvStats, blocks_per_page: int = 1, held_blocks: int = 0) -> dict[str, int]:
    """An instance's KV block counts as a worker reports them, as ``PolicyDriver.set_kv`` takes them. With pages of
    several blocks (ModelInfo.kv_blocks_per_page) a page stays mapped while any block on it is, so mapped counts
    whole pages of blocks, or held_blocks (the blocks' worth of the pages the worker reports) when more."""
    pages = align_up(kv.kv_blocks_mapped, blocks_per_page)
    return {"total": kv.kv_blocks_total, "used": kv.kv_blocks_used,
            "mapped": min(max(pages, held_blocks), max(kv.kv_blocks_total, kv.kv_blocks_mapped)),
            "wanted": kv.kv_blocks_wanted}


def fire(hub, w: WorkerRecord, msg, on_reply=None, on_error=None) -> None:
    """Send a control request whose answer only matters if it is an error (logged, then given to ``on_error``
    unless its worker was lost: the loss ends what it was for) or carries state (given to ``on_reply``)."""
    fut = hub.start_call(w, msg)

    def done(f):
        if f.cancelled():
            return
        exc = f.exception()
        reply = None if exc else f.result()
        if exc is None and isinstance(reply, P.Error):
            exc = reply.exception()
        if exc is not None:
            if not isinstance(exc, WorkerLostError):
                log.warning("%s on %r failed: %s", type(msg).__name__, w, exc)
                if on_error is not None:
                    on_error(exc)
        elif on_reply is not None:
            on_reply(reply)

    fut.add_done_callback(done)


class LiveInstance:
    """An instance as the controller tracks it on its workers (one per rank; ``worker`` is rank 0's)."""

    __slots__ = ("iid", "model", "workers", "ready", "group_id", "rank_lost", "refused", "activating",
                 "dedicate_again", "start_kind")

    def __init__(self, iid: str, model: str, workers: list[WorkerRecord]):
        self.iid, self.model, self.workers = iid, model, workers
        self.ready = False
        #: Its Activate has gone out (a stop must deactivate it from then on).
        self.activating = False
        #: The process group of a tensor-parallel instance ("" at tp = 1).
        self.group_id = ""
        #: Its rank 0 reported a lost rank (groups.GroupManager.rank_lost): its requests move as after a loss.
        self.rank_lost = False
        #: Its worker refused a request of it as not running the model there (refusals.not_running): the same.
        self.refused = False
        #: Its Dedicate was refused beside a co-resident still listed there: sent again once it is alone (``sync``).
        self.dedicate_again = False
        #: How it got its weights, as the prewarm metrics count it: "prewarm hit", "prewarm miss" or one still loading.
        self.start_kind = "prewarm miss"

    @property
    def worker(self) -> WorkerRecord:
        return self.workers[0]

    @worker.setter
    def worker(self, w: WorkerRecord) -> None:
        self.workers[0] = w


def outcome_of(error: BaseException) -> str:
    """The ``outcome`` label of a request that ended with ``error``, for the request counter."""
    from warmserve.controller.errors import NoWorkersError
    from warmserve.errors import TimeoutError_

    if isinstance(error, TimeoutError_):
        return "timeout"
    if isinstance(error, (WorkerLostError, NoWorkersError)):
        return "worker_lost"
    return "error"


class LiveExecutor:
    """The ``Executor`` of a live cluster. ``ctl`` is the Controller: its hub, models, metrics, clock, task
    spawner and worker table (``by_gpu``)."""

    def __init__(self, ctl):
        self.ctl = ctl
        self.instances: dict[str, LiveInstance] = {}
        self.prewarms: dict[str, LivePrewarm] = {}
        #: Workers (by id) already logged as unable to start a fresh engine process (remote ones): logged once.
        self._in_process_noted: set[str] = set()
        #: The load of each start still under way, by instance id: a prewarm that keeps a stopped start's weights
        #: takes it over (keep_prewarm).
        self._loads: dict[str, LivePrewarm] = {}
        #: Models logged as held by no admitted worker's pool (``fail_unheld``), until one can hold them.
        self._unheld: set[str] = set()
        #: The (capacity_bytes, page_bytes) of every worker admitted so far, lost ones too (``fail_unheld``): added
        #: as each is admitted (``Controller._admit``). Found in review: read off the live workers at each tick, a
        #: worker admitted and lost between two ticks (a loaded machine) never counted, and its model's requests
        #: failed at once as if no worker could ever hold it.
        self.pools_seen: set[tuple[int, int]] = set()

    def _workers(self, gpus: tuple[int, ...]) -> list[WorkerRecord]:
        """The workers of ``gpus``, rank order (the policy's order of the GPU set, kept for its whole life)."""
        return [self.ctl.by_gpu[g] for g in gpus]

    def evict_all(self, workers, model: str) -> None:
        for w in workers:
            if w is not None and w.alive:
                self._fire(w, P.Evict(id=self.ctl.hub.next_id(), name=model))

    def _fire(self, w: WorkerRecord, msg, on_reply=None, on_error=None) -> None:
        fire(self.ctl.hub, w, msg, on_reply, on_error)

    # ---- the tick ---------------------------------------------------------------------------------------

    def sync(self, now_s: float) -> None:
        """KV block counts of running instances from the workers' latest stats (pushed with their heartbeats)."""
        driver = self.ctl.driver
        for iid, inst in self.instances.items():
            stats = inst.worker.stats  # rank 0's: every rank holds the same KV blocks
            if not inst.ready or stats is None:
                continue
            model = driver.state.models[inst.model]
            for i in stats.instances:
                if i.name == inst.model:
                    # (at the default page every block is whole pages of its own: its count is exact)
                    held = (pages_for(i.kv_pages * stats.pool.page_bytes, model.kv_block_bytes)
                            if stats.pool.page_bytes > PAGE_BYTES else 0)
                    driver.set_kv(iid, **kv_counts(i.kv, model.kv_blocks_per_page, held))
                    if inst.dedicate_again and i.shared and len(stats.instances) == 1:
                        self._dedicate(inst)

    def settle(self, now_s: float) -> None:
        pass

    # ---- prewarms ---------------------------------------------------------------------------------------

    def load_prewarm(self, p: PrewarmState, now_s: float) -> None:
        pw = self.prewarms[p.prewarm_id] = LivePrewarm(p.prewarm_id, p.model, self._workers(p.gpus))
        driver = self.ctl.driver
        # Progress of the rank 0 shard stands for all: the ranks load shards of one size side by side.

        def progress(msg: P.PrewarmProgress):
            if msg.total_bytes:
                driver.prewarm_progress(pw.pid, min(0.999, msg.loaded_bytes / msg.total_bytes))

        pw.start(self.ctl, progress)
        self._watch(pw)

    def _watch(self, pw: LivePrewarm) -> None:
        """Report the outcome of a prewarm's load (``pw.futs``) to the driver."""
        if len(pw.futs) == 1:
            self._one_done(pw, self.ctl.driver)
        else:
            self.ctl._spawn(self._outcome(pw, self.ctl.driver))

    async def _outcome(self, pw: LivePrewarm, driver) -> None:
        """A tensor-parallel prewarm's outcome, once every shard is loaded or one failed."""
        try:
            await pw.wait(LOAD_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if pw.pid in driver.state.prewarms:  # (a worker's loss takes it out of the state first, as a rule)
                self._prewarm_failed(pw, pw.workers, e)  # evicts the shards that did load
            return
        pw.loaded = True
        if pw.pid in driver.state.prewarms:
            driver.prewarm_loaded(pw.pid)

    def _one_done(self, pw: LivePrewarm, driver) -> None:
        """A whole-model prewarm: its outcome from the one reply, in the reply's callback (no task), or a failure
        after LOAD_TIMEOUT_S without one. Found in review: with no bound (a tp > 1 prewarm's task has had one), a
        load that never answered, its worker up, stayed reserved in the driver's state for good. A load that
        timed out is evicted (the Evict cancels it on the worker), as a failed tp > 1 prewarm's shards are."""
        first = pw.futs[0]

        def expire():
            # (a late reply finds it done, and is dropped: workers.WorkerHub._dispatch)
            if not first.done() and not self.ctl.closing:
                first.set_exception(TimeoutError_(
                    f"{pw.worker!r} did not load {pw.model!r} within {LOAD_TIMEOUT_S:.0f} s", timeout_s=LOAD_TIMEOUT_S,
                    worker_id=pw.worker.worker_id))

        timer = asyncio.get_running_loop().call_later(LOAD_TIMEOUT_S, expire)

        def done(fut: asyncio.Future):
            timer.cancel()
            exc = fut.exception() if not fut.cancelled() else None
            reply = None if exc is not None or fut.cancelled() else fut.result()
            if isinstance(reply, P.Error):
                exc = reply.exception()
            if exc is None:
                pw.loaded = True
                driver.prewarm_loaded(pw.pid)
            elif pw.pid in driver.state.prewarms:
                self._prewarm_failed(pw, pw.holders(), exc)  # none after an error reply; the load after a timeout

        first.add_done_callback(done)

    def _prewarm_failed(self, pw: LivePrewarm, holders, error: BaseException) -> None:
        """A load that the driver still counts failed: it leaves the state, and what it may have loaded on
        ``holders`` (those alive) is evicted. Its worker may be dead: found in review, a prewarm sent to a worker
        lost a moment before (in the same policy tick) was left in the state, reserved on a gone GPU, for good."""
        log.warning("%s on %r failed: %s", instance_words(pw.pid, pw.model, "prewarm"), pw.workers, error)
        self.ctl.driver.prewarm_failed(pw.pid)
        self.prewarms.pop(pw.pid, None)
        self.evict_all(holders, pw.model)

    def keep_prewarm(self, p: PrewarmState, kept: KeptWeights, now_s: float) -> None:
        # a stopped instance's weights, still on the worker (Deactivate keeps them): nothing to copy
        pw = self.prewarms[p.prewarm_id] = LivePrewarm(p.prewarm_id, p.model, self._workers(p.gpus))
        load = self._loads.get(kept.instance_id)
        if load is not None and load.futs:
            # Stopped before its load ended: the weights are there once that load is, and its outcome is this
            # prewarm's. A start from it waits for it: taken as loaded, its Activate reached a worker still loading
            # and was refused.
            pw.futs = load.futs
            self._watch(pw)
        else:
            pw.loaded = True

    def drop_prewarm(self, p: PrewarmState, evicted: bool, now_s: float) -> None:
        pw = self.prewarms.pop(p.prewarm_id, None)
        if pw is not None:
            self.evict_all(pw.workers, pw.model)

    def drop_kept(self, kept: KeptWeights, now_s: float) -> None:
        self.evict_all([self.ctl.by_gpu.get(g) for g in kept.gpus], kept.model)

    # ---- instances --------------------------------------------------------------------------------------

    def start_instance(self, inst: InstanceState, act: A.StartInstance, p: PrewarmState | None,
                       now_s: float) -> None:
        pw = self.prewarms.pop(p.prewarm_id, None) if p is not None else None
        rec = self.instances[inst.instance_id] = LiveInstance(inst.instance_id, inst.model, self._workers(inst.gpus))
        # A start from a prewarm still loading waits out the rest of its copy: not a hit, as the simulator counts it
        # (found in review: counted a hit, so the live hit rate was the higher of two figures with one name)
        m = self.ctl.metrics
        rec.start_kind, counted = (("prewarm miss", m.prewarm_misses) if pw is None else
                                   ("prewarm hit", m.prewarm_hits) if pw.loaded else
                                   ("from a prewarm still loading", m.prewarm_loading_starts))
        counted.inc(model=inst.model)
        self.ctl._spawn(self._start(rec, pw, act))

    def _withdrawn(self, inst: LiveInstance) -> bool:
        """Whether the driver no longer wants the starting ``inst``: stopped, or lost with a worker (either takes its
        record). What it loaded is then the driver's: kept weights (dropped at the end of the tick, or kept as a
        prewarm), or evicted with the loss."""
        return self.instances.get(inst.iid) is not inst or inst.iid not in self.ctl.driver.state.instances

    async def _start(self, inst: LiveInstance, pw: LivePrewarm | None, act: A.StartInstance) -> None:
        try:
            if len(inst.workers) > 1:
                await self._start_tp(inst, pw, act)
            else:
                await self._start_one(inst, pw, act)
        finally:
            self._loads.pop(inst.iid, None)

    async def _start_one(self, inst: LiveInstance, pw: LivePrewarm | None, act: A.StartInstance) -> None:
        ctl, w = self.ctl, inst.worker
        hub = ctl.hub
        loaded = False
        try:
            if pw is None and not act.warm_engine:
                w = await self._fresh_engine(inst)
                if inst.iid not in ctl.driver.state.instances:  # stopped while its engine started
                    return
            if pw is None:
                pw = LivePrewarm(act.instance_id, act.model, [w])
                pw.start(ctl)
            self._loads[inst.iid] = pw
            if not pw.loaded:
                await pw.wait(LOAD_TIMEOUT_S)
            loaded = True
            if self._withdrawn(inst):
                # Found in review: the Activate went out regardless, and a start stopped while it loaded ran on the
                # worker, unrouted, where the driver kept its weights as a prewarm (or had them evicted).
                log.info("%s: not activated, withdrawn while it loaded", instance_words(inst.iid, inst.model))
                return
            shared = act.kv_fraction < 1.0
            # a share holds at least one request at the model's context (kv_blocks_for): the driver counted the same
            kv_blocks = kv_blocks_for(ctl.driver.state, act.model, act.gpus, act.kv_fraction) if shared else None
            inst.activating = True
            reply = await hub.call(w, ctl.activate_message(act.model, kv_blocks, shared), CALL_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed(inst, e, pw, loaded)
            return
        if inst.iid not in ctl.driver.state.instances:  # lost or stopped while starting
            return
        inst.ready = True
        log.info("%s ready on %r (%s%s)", instance_words(inst.iid, inst.model), w, start_words(inst.start_kind, pw),
                 f", co-served, KV share {kv_blocks} blocks" if shared else "")
        k = int(reply.kv_blocks)
        ctl.driver.instance_ready(inst.iid, ctl.now_s(), kv_blocks_total=k, kv_blocks_mapped=k,
                                  max_seqs=ctl.engine_config.max_num_seqs)

    async def _start_tp(self, inst: LiveInstance, pw: LivePrewarm | None, act: A.StartInstance) -> None:
        """Start a tensor-parallel instance: its group (prewarmed, or built now), every rank's shard (prewarmed,
        or loaded now), then every rank's activation at once (they meet in the group). A cold start loads into
        the running workers: a fresh engine process per rank is not built (tp > 1 under `autoscale` is therefore
        "engine prewarmed")."""
        ctl = self.ctl
        loaded = False
        try:
            group = await ctl.groups.ensure(tuple(act.gpus))
            if inst.iid not in ctl.driver.state.instances:
                return
            if pw is None:
                pw = LivePrewarm(act.instance_id, act.model, list(inst.workers))
                pw.start(ctl)
            self._loads[inst.iid] = pw
            if not pw.loaded:
                await pw.wait(LOAD_TIMEOUT_S)
            loaded = True
            if self._withdrawn(inst):  # as in _start_one; a rank lost meanwhile left the others a group without it
                log.info("%s: not activated, withdrawn while it loaded", instance_words(inst.iid, inst.model))
                return
            inst.group_id = group.group_id
            inst.activating = True
            replies = await asyncio.gather(*(
                ctl.hub.call(w, ctl.activate_message(act.model, None, False, group.group_id), CALL_TIMEOUT_S)
                for w in inst.workers))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed(inst, e, pw, loaded)
            return
        if inst.iid not in ctl.driver.state.instances:
            return
        inst.ready = True
        k = int(replies[0].kv_blocks)
        log.info("%s ready on %r in group %s (%s)", instance_words(inst.iid, inst.model), inst.workers,
                 group.group_id, start_words(inst.start_kind, pw))
        ctl.driver.instance_ready(inst.iid, ctl.now_s(), kv_blocks_total=k, kv_blocks_mapped=k,
                                  max_seqs=ctl.engine_config.max_num_seqs)

    async def _fresh_engine(self, inst: LiveInstance) -> WorkerRecord:
        """A cold start without a warm engine (``StartInstance.warm_engine`` False: `autoscale`) starts a new engine
        process, as vanilla autoscaling does: the GPU's local worker process is replaced by a fresh one (same
        device, same GPU id; ``Controller.replace_worker``) and the weights are loaded into that. Only a worker
        that holds nothing else can be replaced: otherwise, and for remote workers (the controller cannot start
        their processes), the weights load into the running process (logged once per worker)."""
        ctl, w = self.ctl, inst.worker
        if not ctl.can_replace(w):
            if w.worker_id not in self._in_process_noted:
                self._in_process_noted.add(w.worker_id)
                log.warning("cold starts on %r load into its running process, not a fresh engine process: it is "
                            "not a local worker this controller can restart (logged once per worker)", w)
            return w
        why = self._busy(inst)
        if why is not None:
            log.info("cold start of %s on %r loads into the running worker process: %s", inst.model, w, why)
            return w
        inst.worker = await ctl.replace_worker(w, inst.model)
        return inst.worker

    def _busy(self, inst: LiveInstance) -> str | None:
        """Why the worker of a starting instance cannot be replaced by a fresh process, or None when it holds
        nothing else (the policy placed the start on a GPU with no instance, prewarm or kept weights)."""
        w, st = inst.worker, self.ctl.driver.state
        gid = w.gpu_id
        if w.gens:
            return f"{len(w.gens)} requests are running on it"
        if any(gid in i.gpus for iid, i in st.instances.items() if iid != inst.iid):
            return "another instance is on its GPU"
        if any(gid in p.gpus for p in st.prewarms.values()) or any(p.worker is w for p in self.prewarms.values()):
            return "a prewarm is on its GPU"
        if any(gid in k.gpus for k in self.ctl.driver.kept.values()):
            return "a stopped instance's weights are kept on its GPU"
        return None

    def _failed(self, inst: LiveInstance, e: BaseException, pw: LivePrewarm | None, loaded: bool) -> None:
        """A start failed. ``pw``: the load it made or took (None: none went out); ``loaded``: every shard of it
        loaded (the Activate may have gone out)."""
        ours = self.instances.pop(inst.iid, None) is not None
        # (not ours: stopped or lost while it started, and ended by that, e.g. its load cancelled by the Evict of
        # the weights the stop kept; nothing failed)
        log.log(logging.WARNING if ours else logging.INFO, "%s on %r %s: %s", instance_words(inst.iid, inst.model),
                inst.worker, "failed to start" if ours else "ended while it started", e)
        # (A record taken already was a loss's, which evicted the survivors, or a stop's, whose weights the driver
        # keeps: a later start of the model may run from them, which a Deactivate and Evict here would end.)
        if loaded and ours:
            # The weights got loaded: drop them, so the workers' memory matches the state again. An Evict is refused
            # while the model runs there, so deactivate first where the Activate may have run: every rank after a
            # tensor-parallel start (a half-done activation), and a tp = 1 worker that did not answer in time (it
            # activates on, and runs the instance once done). Found in review: that tp = 1 case got only the Evict,
            # refused, and the instance ran on with its KV cache while the driver had the GPU free (and the
            # model's next Prewarm there was refused). After an answer (an error) nothing runs at tp = 1.
            unanswered = isinstance(e, TimeoutError_)
            for w in inst.workers:
                if w.alive and (len(inst.workers) > 1 or unanswered):
                    self.deactivate(w, inst.model)
            self.evict_all(inst.workers, inst.model)
        elif pw is not None and ours:
            # A load went out (this start's, or the prewarm's it took) and did not end well on every shard: drop
            # what may be there (a shard that loaded, a load still under way: the Evict cancels it). Found in
            # review: a load that timed out was left to finish, its weights on the worker unknown to the driver.
            self.evict_all(pw.holders(), inst.model)
        self.ctl.driver.instance_failed(inst.iid, self.ctl.now_s(), e)

    def stop_instance(self, inst: InstanceState, now_s: float) -> None:
        rec = self.instances.pop(inst.instance_id, None)
        if rec is None or not rec.activating:
            return  # still starting: it sends no Activate now (_withdrawn), and the worker has nothing to deactivate
        # Found in review: a scale-in left no line at any level, so instances vanished from the log unexplained.
        log.info("%s on %r stopped by the policy (scaled in or moved), %.0f s after its start",
                 instance_words(rec.iid, rec.model), rec.workers[0] if len(rec.workers) == 1 else rec.workers,
                 now_s - inst.created_s)
        # Deactivate keeps the weights resident: a Prewarm that keeps them takes them as they are; otherwise
        # the driver drops them (drop_kept) at the end of the next tick. Rank 0 first: it tells the others to stop.
        for w in rec.workers:
            if w.alive:
                self.deactivate(w, rec.model)

    def deactivate(self, w: WorkerRecord, model: str, tries: int = 1) -> None:
        """Send the Deactivate of ``model`` to ``w``, again while the worker answers an error other than "not
        running": DEACTIVATE_TRIES in all. A worker whose KV page unmap failed answers DriverError and keeps the
        model running until one succeeds (worker/core.py, _close_instance). Found in review: sent once, the model ran
        on there while the driver held the GPU empty, and its Evict and every later start of it there were refused.
        A retry that succeeds evicts the weights if the driver counts no copy there now; a worker that refuses every
        try is admitted again (``WorkerHub.rejoin``: its admission deactivates what it runs, and what else ran there
        starts over elsewhere)."""
        ctl = self.ctl

        def done(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                return  # the worker is lost: its loss ends what ran there
            reply = f.result()
            if not isinstance(reply, P.Error):
                if tries > 1 and w.alive and tracked_copies(ctl, w, model) == 0:
                    self.evict_all([w], model)
                return
            exc = reply.exception()
            if isinstance(exc, (ModelStateError, UnknownModelError)) or not w.alive or ctl.closing:
                return
            if tries < DEACTIVATE_TRIES:
                wait_s = DEACTIVATE_RETRY_S * 2 ** (tries - 1)
                log.warning("Deactivate of %s on %r failed (try %d of %d): %s; sent again in %.1f s", model, w, tries,
                            DEACTIVATE_TRIES, exc, wait_s)
                asyncio.get_running_loop().call_later(wait_s, self._deactivate_again, w, model, tries + 1)
                return
            log.error("Deactivate of %s on %r failed %d times (last: %s): the worker is admitted again, so that it "
                      "runs nothing the controller does not know of", model, w, tries, exc)
            ctl.hub.rejoin(w, f"its Deactivate of {model!r} failed {tries} times (last: {exc}), leaving an instance "
                              f"the controller stopped running there")

        ctl.hub.start_call(w, P.Deactivate(id=ctl.hub.next_id(), name=model)).add_done_callback(done)

    def _deactivate_again(self, w: WorkerRecord, model: str, tries: int) -> None:
        # Not once a new instance of the model there has sent its Activate: the Deactivate would stop that one.
        if not w.alive or self.ctl.closing or any(
                r.model == model and r.activating and w in r.workers for r in self.instances.values()):
            return
        self.deactivate(w, model, tries)

    def set_kv_target(self, inst: InstanceState, free_blocks: int, now_s: float) -> None:
        rec = self.instances.get(inst.instance_id)
        if rec is None or not rec.ready:
            return  # to rank 0 only: it passes the target on to the other ranks (worker/tp.py)
        inst.kv_blocks_mapped = min(inst.kv_blocks_total, inst.kv_blocks_used + free_blocks)
        driver, iid = self.ctl.driver, inst.instance_id
        k = driver.state.models[inst.model].kv_blocks_per_page
        self._fire(rec.worker, P.SetKvTarget(id=self.ctl.hub.next_id(), model=rec.model, free_blocks=free_blocks),
                   on_reply=lambda r: driver.set_kv(iid, **kv_counts(r.kv, k)))

    def dedicate_instance(self, inst: InstanceState, now_s: float) -> None:
        rec = self.instances.get(inst.instance_id)
        if rec is None or not rec.ready or len(rec.workers) > 1:
            return  # a tensor-parallel instance is never co-served
        self._dedicate(rec)

    def _dedicate(self, rec: LiveInstance) -> None:
        driver, iid, metrics, w = self.ctl.driver, rec.iid, self.ctl.metrics, rec.worker
        k = driver.state.models[rec.model].kv_blocks_per_page
        rec.dedicate_again = False

        def dedicated(r: P.KvTargetSet) -> None:
            driver.set_kv(iid, **kv_counts(r.kv, k))
            metrics.dedicated.inc(model=r.model)
            log.info("%s on %r is dedicated where it stands: KV cap %d blocks", rec.model, w, r.kv.kv_blocks_total)

        def refused(exc: Exception) -> None:
            # Refused beside a co-resident whose Deactivate failed and is being sent again (found in review: sent
            # once, the policy took the instance for dedicated while its engine kept its co-served KV share for good)
            rec.dedicate_again = isinstance(exc, ModelStateError) and self.instances.get(iid) is rec
            if rec.dedicate_again:
                log.info("the Dedicate of %s on %r is sent again once it runs alone there", rec.model, w)

        self._fire(w, P.Dedicate(id=self.ctl.hub.next_id(), model=rec.model), on_reply=dedicated, on_error=refused)

    # ---- requests ---------------------------------------------------------------------------------------

    def send(self, req, inst: InstanceState, now_s: float) -> None:
        w = self.instances[inst.instance_id].worker
        hub = self.ctl.hub
        gid = hub.next_id()
        try:
            data = P.encode(P.Generate(id=gid, model=req.model, prompt_ids=req.prompt_ids, sampling=req.sampling,
                                       output_ids=req.token_ids))
        except (OverflowError, TypeError, ValueError) as e:
            # The wire cannot carry it (a token id beyond 64 bits, a value of the wrong type): it ends here, and
            # the instance's in-flight count (raised by the driver before this call) with it.
            req.fail(InvalidArgumentError(f"the request cannot be sent to a worker ({type(e).__name__}: {e}): "
                                          f"check the prompt's token ids and the sampling values", param="prompt"))
            self.ctl._request_done(req, "error")
            self.ctl.driver.request_finished(req.model, inst.instance_id, now_s, route=False, request=req)
            return
        req.worker, req.instance_id, req.gid = w, inst.instance_id, gid
        req.sent_s = time.monotonic()
        req.prefilling = True
        w.gens[gid] = req
        try:
            hub.send(w, data)
        except WorkerLostError:
            return  # the loss (Controller._on_lost) re-queued it
        # Counted here, as sent: found in review, counted at submit, requests that never reached an instance (timed
        # out or aborted while queued) were counted, and a resumption's prefill of its prompt and tokens was not.
        self.ctl.metrics.prompt_tokens.inc(len(req.prompt_ids) + len(req.token_ids), model=req.model)
        if req.queue_s is None:
            self.ctl.metrics.first_sent(req, req.sent_s - req.arrival_s)

    def migrate_requests(self, inst: InstanceState, now_s: float) -> list:
        rec = self.instances.get(inst.instance_id)
        if rec is None:
            return []
        w = rec.worker
        moved = sorted((req for req in w.gens.values() if req.instance_id == inst.instance_id), key=lambda r: r.rid)
        for req in moved:
            # Off the worker's table at once: tokens it still sends for this Generate are dropped, and the
            # resumption generates them again after those the client has. No Abort: the Deactivate of the stop
            # that follows ends them on the worker (and nothing is sent from here, see Executor).
            del w.gens[req.gid]
            req.requeued(self.ctl.cc.request_timeout_s)
            why = "rank_lost" if rec.rank_lost else "not_running" if rec.refused else "migrated"
            (self.ctl.metrics.migrated if why == "migrated" else self.ctl.metrics.rerouted).inc(model=req.model)
            if req.generated:
                self.ctl.metrics.resumed.inc(model=req.model, why=why)
        if moved:  # found in review: moves were only counted, so a later loss could not be traced back to one
            log.info("%d request(s) of %s on %r move to its model's other instances (%s), each resumed after its "
                     "tokens", len(moved), instance_words(inst.instance_id, inst.model), w, why.replace("_", " "))
        return [(req, req.resume_prompt_tokens) for req in moved]

    def expire_requests(self) -> None:
        """Fail what waited too long, queued or on an admitted worker (``controller.expiry``)."""
        expiry.expire(self)

    def fail_unheld(self) -> None:
        """Fail at once the waiting requests of models no worker admitted so far can hold (``controller.expiry``)."""
        expiry.fail_unheld(self)

    def fail(self, req, error: BaseException, now_s: float) -> None:
        req.fail(error)
        self.ctl._request_done(req, outcome_of(error))
