"""Tensor-parallel instances on workers: process groups built ahead, and ranks that step in lockstep.

A ``tp``-way instance is one shard per worker, each in its own worker process (one per device). Rank 0's worker is
the *leader*: it takes the instance's requests from the controller like any instance and streams their tokens.
The other ranks are *followers*: they receive no request. Before each engine step the leader broadcasts, through
the instance's own process group, a ``protocol.RankStep`` that lists the requests it added and aborted since the
last step (msgspec bytes in a uint8 tensor: the same struct vocabulary as the sockets, and no pickle). Every rank
applies the same changes in the same order to an engine with the same KV blocks, so their schedulers take the
same steps and the model's collectives line up; the logits are all-gathered, so every rank samples the same token
(a sampled request gets its seed from the leader when it has none).

After applying a plan every rank says whether it could, in one all-reduce over the group's gloo control group
(``grow_together``, which carries the KV agreement below in the same message): a rank that fails alone (an
exception in ``add_request``, a step counter out of line) stops every rank at once with a typed error, instead
of leaving the others in the step's collectives, which NCCL never fails on its own (its watchdog ends the whole
worker after the timeout).

Why KV blocks are mapped together: a rank's scheduler preempts when its KV cache cannot grow, and a rank whose
pool is fuller would preempt where the others do not. So no rank takes pages on its own (``BudgetMapper``
refuses a map that takes pages outside a budget, so the engine's lazy mapping never does): once a plan is
applied every rank computes the same want (its engine state is the same), the ranks agree on how many they can
all map (the all-reduce above carries each rank's count), and each maps that many (``grow_together``). A rank
whose pool lost pages since it counted them (a load beside it) maps fewer: then every rank keeps the fewest any
mapped, the same first blocks, and unmaps the rest. Shrinking (a lower KV target) unmaps free blocks beyond the
target, and compaction moves blocks in use off the pages it can empty, the same blocks on every rank. So the KV
reservation works as for tp = 1: ``SetKvTarget`` goes to the leader, which passes it on with the requests.

A follower steps on a thread of its own, blocked in the broadcast between steps (torch releases the GIL there),
so its worker's main thread goes on serving prewarms, stats and heartbeats. While idle the leader sends a
keep-alive every ``KEEPALIVE_S``, well inside the group's timeout; a rank whose peer died sees its next
collective fail at once (gloo reports the closed connection), and the instance ends with ``WorkerLostError``.
An engine step that raises on every rank at the same point (an engine bug: the same code over the same state)
fails its requests with ``EngineError`` as at tp = 1, and the group serves on; the ranks learn that they failed
together through the group's store (``ParallelGroup.failed_together``), never through the group, in which a rank
still waiting in one of the step's collectives would take the message for its own. A step that raised on some
ranks only ends the instance as one that lost a rank.

Process groups are built ahead (``JoinGroup``), while the workers are idle: the controller asks for one per
aligned GPU group the placement can produce, so activating a tensor-parallel instance binds a group that exists
(the paper prewarms its NCCL communicators the same way). A worker joins its groups one at a time on a thread, in
the order the controller sent them (``tp_groups.GroupTable``); the store a group meets at is hosted by rank 0's worker,
on loopback (a group never spans two machines).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Union

import msgspec

from .. import errors
from .. import protocol as P
from ..errors import WarmServeError, register
from .tp_agree import check_agreed, shard_values, vote_values

log = logging.getLogger("warmserve.worker")

#: How long an Activate in a group waits for the follower loop of the instance stopped there to end, seconds.
HANDOVER_WAIT_S = 10.0

#: Seconds between keep-alive broadcasts of an idle leader (the group's timeout, 30 s by default, must exceed it).
KEEPALIVE_S = 1.0
#: Seconds a rank whose engine step raised waits for the others to say theirs raised at the same point
#: (ParallelGroup.failed_together): the same code over the same state fails within milliseconds on every rank.
STEP_FAILURE_WAIT_S = 2.0

# The plan a leader broadcasts before each step. Not socket messages (they travel through the group, between the
# ranks of one instance), so they live here rather than in protocol.py; msgspec structs all the same.


class RankAdd(msgspec.Struct, frozen=True, omit_defaults=True, tag=True):
    """A request the leader of a tensor-parallel instance admitted, for the other ranks to admit identically."""

    request_id: str
    prompt_ids: list[int]
    sampling: P.SamplingParams
    #: Tokens a resumed request had out already (``protocol.Generate.output_ids``).
    output_ids: list[int] = []


class RankAbort(msgspec.Struct, frozen=True, tag=True):
    """A request the leader aborted (its KV blocks are freed on every rank)."""

    request_id: str


class RankKvTarget(msgspec.Struct, frozen=True, tag=True):
    """The instance's target of free KV blocks changed (``SetKvTarget`` on the leader)."""

    free_blocks: int


class RankStep(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the leader of a tensor-parallel instance tells the other ranks before each engine step, through the
    group itself (never a socket): what changed since the last step, in the order the leader applied it, and
    whether to step. The ranks' engines then hold the same state, so their schedulers take the same decisions
    and their collectives line up."""

    #: The leader's step counter when it sent this (a follower checks its own against it).
    step: int = 0
    events: list[Union[RankAdd, RankAbort, RankKvTarget]] = []
    #: Run one engine step after applying the changes (False: a keep-alive while the instance is idle).
    run: bool = False
    #: The instance stops: the ranks close their engines.
    stop: bool = False


_plan_decoder = None


@register
class RanksDivergedError(WarmServeError):
    """The ranks of a tensor-parallel instance stopped taking the same steps (a bug): the instance ends."""


def _decoder():
    global _plan_decoder
    if _plan_decoder is None:
        _plan_decoder = msgspec.msgpack.Decoder(RankStep)
    return _plan_decoder


def send_plan(group, plan: RankStep) -> None:
    """Broadcast ``plan`` from rank 0: its length first, then its bytes."""
    import torch

    data = P.encode(plan)
    group.broadcast(torch.tensor([len(data)], dtype=torch.int64))
    group.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def recv_plan(group) -> RankStep:
    """The plan rank 0 broadcast (``send_plan``); blocks until it comes, at most the group's timeout."""
    import torch

    n = group.broadcast(torch.zeros(1, dtype=torch.int64))
    buf = group.broadcast(torch.empty(int(n.item()), dtype=torch.uint8))
    return _decoder().decode(buf.numpy().tobytes())


def lost(name: str, group, e: BaseException) -> errors.WorkerLostError:
    """The typed error of a tensor-parallel instance whose group failed (a rank's worker is gone, or silent)."""
    return errors.WorkerLostError(
        f"the tensor-parallel instance of {name!r} (group {group.group_id}, {group.world_size} ranks) lost a rank: "
        f"{type(e).__name__}: {e}; the instance stopped: retry the request", model=name, group_id=group.group_id)


class BudgetMapper:
    """The KV block mapper of a tensor-parallel shard: takes pool pages only within the budget the ranks agreed
    on. A block whose pages are mapped already (blocks sharing a page) takes none, and the ranks' pages are the
    same, so every rank maps it alike, budget or not: KVCache.compact moves blocks in use into such room, which is
    how a shard gives back the pages they are spread over (found in review: compaction asked for a KVPageMapper,
    and a tensor-parallel instance kept those pages for good after its target was lowered)."""

    def __init__(self, inner):
        self.inner = inner
        #: Blocks this rank may still map (set by grow_together, 0 otherwise).
        self.budget = 0

    def map_block(self, b: int) -> None:
        takes = self.inner.new_pages(b) > 0
        if takes and self.budget <= 0:
            # KVCache takes this as "no page free": the same answer on every rank.
            raise errors.OutOfMemoryError("a tensor-parallel shard maps KV blocks only together with its ranks")
        self.inner.map_block(b)
        self.budget -= int(takes)

    def __getattr__(self, name: str):
        # Everything else (unmapping, counting, what compaction asks) is the inner mapper's.
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class _RankClosed(errors.ModelStateError):
    """This follower was closed on its worker (LeaveGroup, shutdown): its leader sees a lost rank."""


def grow_together(engine, group, error: BaseException | None = None) -> int:
    """Agree that every rank applied the plan, then map the same number of KV blocks on every rank (see the
    module's docstring); every rank calls it at the same point, with the same engine state. error: why this rank
    could not apply the plan (it still takes part, so no rank is left alone in a collective). Raises ``error``
    here, RanksDivergedError on the other ranks. Returns blocks mapped (the same on every rank)."""
    kv = engine.kv
    can = 0
    if error is None:
        try:
            # The reservation (throttled, as KVCache.grow is), or at once what the next step needs (an engine of
            # its own would map that lazily while scheduling).
            short = engine.scheduler.blocks_wanted() - kv.num_free_mapped
            want = min(kv.total_blocks - kv.num_mapped,
                       max(min(kv.map_blocks_per_step, kv.target_free_blocks - kv.num_free_mapped), short))
            if want > 0:  # the same on every rank
                can = kv.mapper.mappable(kv.next_unmapped(want))
        except Exception as e:  # told to the other ranks below, like a plan this rank could not apply
            error = e
    # One collective per plan, on the CPU control group, even with nothing to map: a rank that failed alone would
    # otherwise leave the others in the step's collectives, which NCCL never fails but its watchdog ends the
    # whole worker for (found in review). It carries the map count too, so a plan that maps costs no more.
    # 1: applied; 0: could not (the ranks diverged); -1: this rank was closed on its worker (a lost rank).
    ok, n = group.min_ints([1 if error is None else -1 if isinstance(error, _RankClosed) else 0, can])
    if error is not None:
        raise error
    if ok == -1:
        raise errors.WorkerLostError(f"a rank of group {group.group_id} was closed on its worker: the instance "
                                     "stops", group_id=group.group_id)
    if ok != 1:
        raise RanksDivergedError(f"another rank of group {group.group_id} could not apply the leader's plan (its "
                                 "worker logs why): the instance stops", group_id=group.group_id)
    if n <= 0:
        return 0
    blocks = kv.next_unmapped(n)  # what grow() maps, in this order, on every rank
    kv.mapper.budget, target = n, kv.target_free_blocks
    kv.target_free_blocks = max(target, kv.num_free_mapped + n)  # grow() maps up to the target only
    failed = None
    try:
        got = kv.grow(n)
    except Exception as e:  # still takes part in the check below, so no rank waits for it
        got, failed = -1, e
    finally:
        kv.mapper.budget, kv.target_free_blocks = 0, target
    # A load beside this rank (a prewarm's loader thread) may have taken pages since it counted them: it maps
    # fewer, and stopped quietly where the pool ran out. The ranks keep the fewest any of them mapped (the same
    # first blocks everywhere) and the others unmap the rest, so the instance serves on with the smaller cache
    # and grows again on later plans (found in review: the instance ended with RanksDivergedError).
    ok, least = group.min_ints([int(failed is None), got])
    if failed is not None:
        raise failed
    if ok != 1:
        raise RanksDivergedError(f"another rank of group {group.group_id} failed mapping the {n} KV blocks its "
                                 "ranks agreed on (its worker logs why): the instance stops", agreed=n)
    if got > least:
        kv.unmap_free(blocks[least:got])
        log.info("rank %d of group %s mapped %d of %d KV blocks, another rank %d (its pool ran short): gave %d "
                 "back", group.rank, group.group_id, got, n, least, got - least)
    return least


class Leader:
    """Rank 0 of a running tensor-parallel instance: collects what the other ranks must replay, in order."""

    def __init__(self, group):
        self.group = group
        self.events: list = []
        self.last_sent_s = time.monotonic()

    def added(self, request_id: str, prompt_ids: list[int], sampling: P.SamplingParams, output_ids=()) -> None:
        self.events.append(RankAdd(request_id=request_id, prompt_ids=list(prompt_ids), sampling=sampling,
                                   output_ids=list(output_ids)))

    def aborted(self, request_id: str) -> None:
        self.events.append(RankAbort(request_id=request_id))

    def kv_target(self, free_blocks: int) -> None:
        self.events.append(RankKvTarget(free_blocks=int(free_blocks)))

    def send(self, engine, *, run: bool = False, stop: bool = False) -> None:
        """Tell the other ranks what changed (and to step, or stop), then map KV blocks with them. Raises the
        group's error if a rank is gone."""
        plan = RankStep(step=engine.num_steps, events=self.events, run=run, stop=stop)
        self.events = []
        self.last_sent_s = time.monotonic()
        send_plan(self.group, plan)
        if not stop:
            grow_together(engine, self.group)

    def idle_due(self, now_s: float) -> bool:
        return now_s - self.last_sent_s >= KEEPALIVE_S

    def step_failed_together(self, e: BaseException) -> bool:
        """The leader's engine step raised ``e``: whether every rank's raised at the same point (see Follower._step),
        so the group takes the next plan; False: a rank may wait in the step's collectives, the instance is over."""
        return self.group.failed_together(type(e).__name__, STEP_FAILURE_WAIT_S)


class Follower:
    """Rank > 0 of a running tensor-parallel instance: replays the leader's plans on its own thread."""

    def __init__(self, name: str, group, engine):
        self.name, self.group, self.engine = name, group, engine
        #: Why the loop ended, when it ended on an error (the group failed, or the plans diverged).
        self.error: BaseException | None = None
        #: Set before the worker closes the engine: the loop must not touch it again.
        self.closing = False
        #: (peer, request id) of each Deactivate answered once the loop has ended.
        self.deactivates: list[tuple] = []
        #: (peer, Evict) of each Evict applied once the engine is closed (ShardRoles._evict_when_closed).
        self.evicts: list[tuple] = []
        self.steps = 0
        #: Held by the loop while it touches the engine (apply, grow, step); the worker closes the engine only
        #: holding it (close_engine), never under a step (found in review: a LeaveGroup mid-step unmapped the KV
        #: pages under the running forward, SIGSEGV).
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"tp-follower-{name}", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def close_engine(self, wait_s: float = 0.0) -> bool:
        """Stop the loop from touching the engine again and close it, unless the loop is stepping it now (waits
        at most wait_s for that step): False then, and the engine is still open; it is closed after the loop
        ends (it ends at the leader's next plan, telling the leader this rank was closed, or when the group fails)."""
        self.closing = True
        if not (self.lock.acquire(timeout=wait_s) if wait_s > 0 else self.lock.acquire(blocking=False)):
            return False
        try:
            self.engine.close()
        finally:
            self.lock.release()
        return True

    def _apply(self, plan: RankStep) -> None:
        """The leader's changes, in its order; and the step counters must agree before a step."""
        eng = self.engine
        for ev in plan.events:
            if isinstance(ev, RankAdd):
                eng.add_request(ev.request_id, ev.prompt_ids, ev.sampling, ev.output_ids)
            elif isinstance(ev, RankAbort):
                eng.abort(ev.request_id)
            else:
                eng.set_kv_target_free_blocks(ev.free_blocks)
        if plan.run and plan.step != eng.num_steps:
            raise RanksDivergedError(
                f"rank {self.group.rank} of {self.name!r} is at step {eng.num_steps}, the leader at {plan.step}: "
                "the ranks diverged", leader_step=plan.step, step=eng.num_steps)

    def _step(self) -> None:
        """One engine step. One that raised on every rank at the same point (an engine bug hits them alike) the
        leader answers with EngineError, as at tp = 1, and its aborts come with the next plan; one that did not
        may leave a rank in the step's collectives: raised here, the instance is over."""
        try:
            self.engine.step()
        except Exception as e:
            if not self.group.failed_together(type(e).__name__, STEP_FAILURE_WAIT_S):
                raise
            log.error("rank %d of %r: a step failed on every rank; the leader fails its requests\n%s",
                      self.group.rank, self.name, traceback.format_exc())
        self.steps += 1

    def _loop(self) -> None:
        eng = self.engine
        try:
            if self.group.device.type == "cuda":  # a new thread's current device is 0, not the worker's
                import torch

                torch.cuda.set_device(self.group.device)
            while True:  # a close between two plans is told to the leader with the next one
                plan = recv_plan(self.group)
                if plan.stop:
                    return
                with self.lock:
                    if not self.closing:
                        local = None
                        try:
                            self._apply(plan)
                        except Exception as e:  # told to the other ranks in grow_together, then raised there
                            local = e
                        grow_together(eng, self.group, local)
                        if plan.run:
                            self._step()
                        continue
                # Closed on this worker (LeaveGroup, shutdown): say so, so the leader stops at once with a lost rank
                # (grow_together does not touch the engine of a rank that reports an error).
                try:
                    grow_together(eng, self.group, _RankClosed(f"rank {self.group.rank} of {self.name!r} was "
                                                               "closed on its worker"))
                except _RankClosed:
                    return
        except Exception as e:  # the group failed (a rank is gone) or the ranks diverged: the instance is over
            self.error = e if isinstance(e, errors.WarmServeError) else lost(self.name, self.group, e)
            log.warning("tensor-parallel follower of %s stopped: %s", self.name, self.error)


class ShardRoles:
    """The tensor-parallel part of ``worker.core.WorkerCore`` (a mixin: same state, same thread)."""

    def _activate_shard(self, peer, msg: P.Activate) -> None:
        """Activate this worker's shard of a tensor-parallel instance. Every rank runs this at about the same time
        (the controller sends the ranks' Activates together) and meets the others in the same collectives whatever
        happens here: a rank that cannot activate still takes part, with a "no", so every rank fails at once
        instead of waiting out the group's timeout in a collective the failed rank never joins."""
        from ..engine.engine import DEFAULT_MAX_NUM_SEQS, Engine

        group = self.groups.get(msg.group_id)  # without the group there is no one to tell
        for inst in [i for i in self.instances.values() if i.follower and i.tp.group is group]:
            if inst.tp.deactivates or inst.tp.closing:
                # Its stop is on the way: the leader sends it before it votes on this activation, and a follower
                # that read the Deactivate and this Activate in one drain still lists it (found in review: it
                # refused, and the leader waited out the group's timeout). Its loop ends at that stop.
                if inst.tp.join(HANDOVER_WAIT_S):
                    self._close_instance(inst)
        serving = sorted(n for n, i in self.instances.items() if i.tp is not None and i.tp.group is group)
        if serving:
            # Refused here, with no collective: the group's control channel carries the running instance's plans,
            # and a vote on it put them out of step (found in review: a duplicate or retried Activate stalled the
            # worker for the group's timeout, then the instance died on every rank).
            raise errors.ModelStateError(
                f"group {msg.group_id!r} serves the tensor-parallel instance of {serving[0]!r} on worker "
                f"{self.worker_id}: deactivate it before activating another model there", model=msg.name,
                group_id=msg.group_id, running=serving)
        t0 = time.perf_counter()
        ec = msg.engine or self.engine_config
        m, can, local, mine = None, -1, None, None
        try:
            m = self._activatable(msg)
            loaded_before = self._bytes_loaded(m)
            if msg.shared:
                raise errors.InvalidArgumentError(
                    f"{m.name!r} is a tensor-parallel shard: it runs alone on its workers, not shared", model=m.name)
            if group.world_size != m.lm.tp or group.rank != m.lm.tp_rank:
                raise errors.InvalidArgumentError(
                    f"worker {self.worker_id} holds shard {m.lm.tp_rank} of {m.lm.tp} of {m.name!r}, but is rank "
                    f"{group.rank} of {group.world_size} in group {msg.group_id!r}: activate each shard in the "
                    "group where its rank is the shard's", model=m.name, tp=m.lm.tp, tp_rank=m.lm.tp_rank,
                    group_rank=group.rank, group_size=group.world_size)
            can = int(m.lm.kv_capacity_blocks)
            for cap in (msg.kv_blocks, ec.max_kv_blocks or None):
                if cap is not None:
                    can = min(can, int(cap))
            mine = shard_values(m.lm)
        except Exception as e:  # told to the other ranks (a -1 below), then raised here
            local = e
        # The ranks' KV caches must have the same size (see worker/tp.py): the smallest ceiling of any rank. So must
        # their schedulers' limits, which each worker's own engine config sets when the Activate carries none (found
        # in review: ranks of --max-num-seqs 1 and 32 batched differently, and gloo's size check aborted a worker).
        # So must their shards' dtype and checkpoint (tp_agree.py), in the same collective.
        kv_blocks, max_seqs, max_tokens, *agreed = group.min_ints(
            [can, ec.max_num_seqs or DEFAULT_MAX_NUM_SEQS, ec.max_batch_tokens] + vote_values(mine))
        if local is not None:
            raise local
        if kv_blocks < 1:
            raise errors.ModelStateError(
                f"another rank of {msg.name!r} in group {msg.group_id!r} could not activate its shard (see its "
                "worker's answer), or allows no KV block", model=msg.name, group_id=msg.group_id)
        check_agreed(agreed, mine, m.lm, msg.group_id)  # every rank computed its values: kv_blocks says so
        engine = None
        try:
            m.lm.bind_group(group)
            # No block is mapped by the engine itself (target 0, then the budget mapper): grow_together maps them.
            engine = Engine(m.lm, kv_blocks=kv_blocks, target_free_blocks=0,
                            max_batch_tokens=max_tokens, max_num_seqs=max_seqs,
                            map_blocks_per_step=ec.kv_map_blocks_per_step)
            engine.kv.mapper = BudgetMapper(engine.kv.mapper)
            target = msg.kv_target_free_blocks
            engine.set_kv_target_free_blocks(kv_blocks if target is None else target)
        except Exception as e:
            local = e
        try:
            if group.min_int(int(local is None)) != 1:
                raise local or errors.ModelStateError(
                    f"another rank of {msg.name!r} could not start its engine (see its worker's answer)",
                    model=msg.name, group_id=msg.group_id)
            grow_together(engine, group)
        except BaseException:
            if engine is not None:
                engine.close()
            m.lm.parallel = None
            raise
        activate_s = time.perf_counter() - t0
        inst = self.Instance(name=m.name, engine=engine, shared=False)
        inst.tp = Leader(group) if group.rank == 0 else Follower(m.name, group, engine)
        self.instances[m.name] = inst
        m.state = "running"
        self.emit(peer, P.Activated(id=msg.id, name=m.name, kv_blocks=kv_blocks, activate_s=activate_s,
                                    copied_bytes=self._bytes_loaded(m) - loaded_before))

    def _check_leader(self, inst) -> None:
        if inst.follower:
            raise errors.ModelStateError(
                f"worker {self.worker_id} holds rank {inst.tp.group.rank} of the tensor-parallel instance of "
                f"{inst.name!r}: send its requests to rank 0's worker", model=inst.name, rank=inst.tp.group.rank)
        if inst.broken is not None:
            raise errors.WorkerLostError(
                f"the tensor-parallel instance of {inst.name!r} on worker {self.worker_id} lost a rank "
                f"({inst.broken}); deactivate it", model=inst.name)

    def _answer_deactivates(self, inst) -> None:
        """A follower's Deactivates that waited for its loop to end (all of them: a second one too)."""
        while inst.follower and inst.tp.deactivates:
            peer, rid = inst.tp.deactivates.pop(0)
            self.emit(peer, P.Deactivated(id=rid, name=inst.name, aborted=0))

    def _evict_when_closed(self, peer, msg: P.Evict) -> bool:
        """Take an Evict of a follower's running shard whose stop was accepted (LeaveGroup, Deactivate) but is left
        to its thread's end (the thread held the engine): applied once the engine is closed (``_evict_deferred``),
        as those Deactivates are answered then; a follower whose thread has ended already is closed now. Refused
        ("running"), such an Evict left the shard prewarmed once the thread ended, on a worker the controller held to
        be empty, where every later start of the model was refused (a CI run after a rank of a tp = 2 instance was
        killed under load: the survivor's LeaveGroup, then its Evict, while its thread stepped, is the likely way).
        False: refused as for any running model (nothing asked it to stop)."""
        inst = self.instances.get(msg.name)
        if inst is None or not inst.follower or not (inst.tp.closing or inst.tp.deactivates or not inst.tp.running):
            return False
        inst.tp.evicts.append((peer, msg))
        if not inst.tp.running:
            self._close_instance(inst)  # applies it
        return True

    def _evict_deferred(self, inst) -> None:
        """The Evicts that waited for a follower's engine to close (``_evict_when_closed``), now that it is."""
        while inst.follower and inst.tp.evicts:
            peer, msg = inst.tp.evicts.pop(0)
            self.handle(peer, msg)

    def _refuse_evicts(self, inst) -> None:
        """The worker closes with a follower still stepping (its engine left open): its waiting Evicts are answered,
        the shard going with the process."""
        while inst.follower and inst.tp.evicts:
            peer, msg = inst.tp.evicts.pop(0)
            self.emit(peer, P.Error.of(msg.id, errors.ModelStateError(
                f"the worker closed while the tensor-parallel follower of {inst.name!r} still stepped: its shard "
                "is freed with the worker's process", model=inst.name, state="running")))

    def _tp_failed(self, inst, e: BaseException) -> None:
        """A leader's group failed: answer its requests with the typed error; the instance takes no more."""
        err = e if isinstance(e, errors.WarmServeError) else lost(inst.name, inst.tp.group, e)
        inst.broken = err
        log.warning("tensor-parallel instance %s stopped: %s", inst.name, err)
        for rid, key in list(inst.requests.items()):
            self.generations.pop(key, None)
            self.emit(key[0], P.Error.of(key[1], err))
            inst.engine.abort(rid)
        inst.requests.clear()

    def _tp_housekeeping(self) -> None:
        """Keep-alives of idle leaders; followers whose loop ended: closed if a close waited for that (LeaveGroup
        mid-step) or a Deactivate did (answered)."""
        now = time.monotonic()
        for inst in list(self.instances.values()):
            if inst.follower:
                if not inst.tp.running:
                    if inst.broken is None:
                        inst.broken = inst.tp.error or errors.WorkerLostError("stopped by its leader")
                    if inst.tp.closing or inst.tp.deactivates:
                        self._close_instance(inst)
            elif (inst.tp is not None and inst.broken is None and not inst.requests and not inst.engine.closed
                  and not inst.engine.has_unfinished() and inst.tp.idle_due(now)):
                try:
                    inst.tp.send(inst.engine)
                except Exception as e:  # a rank is gone
                    self._tp_failed(inst, e)

