"""The worker's logic, with no sockets: models in the pool, running instances, generations in flight.

``handle(peer, msg)`` applies one request and ``tick()`` advances everything that runs in the background (loads,
engine steps); both answer through ``emit(peer, reply)``. The socket server and the in-process client drive the
same object, so the logic is tested without sockets. Everything here runs on one thread (the worker's main
thread): loads copy in the memory manager's C++ threads and convert on a thread of their own (engine/loader.py),
and are polled here, never waited for. ``tick`` and its stages are in worker/background.py.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import msgspec

from .. import errors
from .. import protocol as P
from ..errors import ModelStateError
from .background import BackgroundWork, as_typed, weight_pages
from .tp import ShardRoles
from .tp_groups import GroupTable

log = logging.getLogger("warmserve.worker")

Peer = Hashable
Emit = Callable[[Peer, Any], None]


@dataclass
class _Model:
    name: str
    path: str
    state: str  # "loading" | "prewarmed" | "running"
    job: Any = None
    lm: Any = None
    #: (peer, request id) of the Prewarm that is loading this model.
    origin: tuple | None = None
    loaded_bytes: int = 0
    total_bytes: int = 0
    #: Tensor-parallel shard held (rank of tp; tp 1: the whole model).
    tp: int = 1
    rank: int = 0
    #: Largest batch its instances will run (Prewarm.max_num_seqs; 0: the worker's engine config).
    max_num_seqs: int = 0
    reported_bytes: int = -1
    reported_at_s: float = 0.0
    started_s: float = 0.0


@dataclass
class _Instance:
    name: str
    engine: Any
    shared: bool
    #: engine request id -> (peer, request id)
    requests: dict[str, tuple] = field(default_factory=dict)
    #: Tensor-parallel: this rank's role (tp.Leader on rank 0, tp.Follower elsewhere); None at tp = 1.
    tp: Any = None
    #: The group of a tensor-parallel instance failed: why (its requests were answered with it).
    broken: BaseException | None = None
    #: The engine configuration's cap on KV blocks it was activated under (None: the slot's whole reservation).
    max_kv_blocks: int | None = None
    #: Monotonic time before which its idle KV growth is not tried again (it failed: BackgroundWork._grow_idle).
    grow_retry_s: float = 0.0
    #: Most wall seconds of its step while other instances run beside it (Activate.turn_s); 0: no limit.
    turn_s: float = 0.0

    @property
    def follower(self) -> bool:
        return self.tp is not None and not hasattr(self.tp, "added")


class WorkerCore(BackgroundWork, ShardRoles):
    """All state of one worker. ``pool`` is a ``warmserve.memory.PagePool``; ``emit(peer, msg)`` sends a reply."""

    #: Seconds between two progress events of one load.
    progress_interval_s = 0.1
    #: The record of a running instance (for ShardRoles, which lives in worker/tp.py).
    Instance = _Instance

    def __init__(self, pool, *, device: str, worker_id: str, emit: Emit, engine: P.EngineConfig | None = None,
                 host_cache=None):
        """``engine``: the limits of instances activated without their own (``Activate.engine``). ``host_cache``:
        the machine's HostCheckpointCache (memory/host_cache.py) prewarms load through; None: from the files."""
        self.pool = pool
        self.host_cache = host_cache
        self.engine_config = engine or P.EngineConfig()
        self.device = device
        self.worker_id = worker_id
        self.emit = emit
        self.models: dict[str, _Model] = {}
        self.instances: dict[str, _Instance] = {}
        #: (peer, request id) -> (instance name, engine request id)
        self.generations: dict[tuple, tuple[str, str]] = {}
        self.stopping = False
        #: Sent SIGTERM, it drains (``WorkerServer.drain``): said in every Stats, so the controller sends no new work.
        self.draining = False
        #: time.monotonic() at which a drain's time is up (WorkerServer.drain sets it); None: not draining.
        self.drain_until_s: float | None = None
        #: Sent SIGTERM and stopping without a drain (worker/main.py): said in Stats (``Stats.stopping``).
        self.stop_signalled = False
        self.started_s = time.monotonic()
        self._next_rid = 0
        self._rr = 0  # round-robin start among shared instances
        #: Process groups for tensor-parallel instances (worker/tp.py).
        self.groups = GroupTable(device, lambda peer, msg: self.emit(peer, msg))  # emit is replaced by servers

    # ------------------------------------------------------------------ dispatch

    def handle(self, peer: Peer, msg) -> None:
        """Apply one request; any failure becomes an ``Error`` reply to its sender, and the worker goes on."""
        try:
            handler = self._HANDLERS.get(type(msg))
            if handler is None:
                raise errors.ProtocolError(
                    f"{type(msg).__name__} is not a request a worker serves", message_type=type(msg).__name__
                )
            handler(self, peer, msg)
        except Exception as e:  # every request gets an answer; a bug in one must not stop the worker
            self.emit(peer, P.Error.of(getattr(msg, "id", -1), as_typed(e)))

    def busy(self) -> bool:
        """Engines have work they can do: the caller should tick again at once. (A follower's engine steps on its
        own thread.) An engine whose requests wait for KV blocks none can have is retried on the idle turns, not in
        a spin of a whole core (found in review: a shared instance starved of pages did that)."""
        return any(i.engine.has_unfinished() and not i.engine.stalled
                   for i in self.instances.values() if not i.follower and i.broken is None)

    def loading(self) -> bool:
        """Loads and group joins run on other threads: tick now and then, without spinning a core they need."""
        return any(m.state == "loading" for m in self.models.values()) or self.groups.joining()

    def drop_peer(self, peer: Peer) -> list[int]:
        """Abort the generations of a peer that went away (no reply: nobody listens). Returns their request ids
        (the server tells the peer if it comes back)."""
        dropped = [key for key in self.generations if key[0] == peer]
        for key in dropped:
            name, rid = self.generations.pop(key)
            inst = self.instances.get(name)
            if inst is not None:
                inst.requests.pop(rid, None)
                self._engine_abort(inst, rid)
        return [key[1] for key in dropped]

    def close(self) -> None:
        """Abort everything and free every page (Shutdown, or the end of an in-process worker)."""
        for key in list(self.generations):
            self._finish_aborted(key)
        # A follower whose thread still steps after a second keeps its engine and weights (never closed under a
        # step; the process's exit frees them); its pending Deactivates are answered all the same.
        left = [i for i in list(self.instances.values()) if not self._close_instance(i, wait_s=1.0)]
        for inst in left:
            log.warning("tensor-parallel follower of %s still steps: its engine is left open", inst.name)
            self._answer_deactivates(inst)
            self._refuse_evicts(inst)
        self.instances.clear()
        self.groups.close()
        for m in list(self.models.values()):
            if m.state == "loading":
                m.job.cancel()
                try:
                    self._close_model(m.job.wait(30.0))  # a load that finished before cancel() reached it
                except Exception:  # cancelled loads end in CancelledError; anything else is moot at close
                    pass
                if m.origin is not None:
                    self.emit(m.origin[0], P.Error.of(m.origin[1], errors.CancelledError(
                        f"prewarm of {m.name!r} was cancelled: the worker closed", model=m.name)))
            elif m.lm is not None and m.name not in {i.name for i in left}:
                self._close_model(m.lm)
        self.models.clear()

    # ------------------------------------------------------------------ requests

    def _prewarm(self, peer, msg: P.Prewarm) -> None:
        from ..engine import load_model

        path = os.path.abspath(os.path.expanduser(msg.path))
        name = msg.name or os.path.basename(os.path.normpath(path))
        if name in self.models:
            raise ModelStateError(
                f"model {name!r} is already {self.models[name].state} on worker {self.worker_id}; "
                f"evict it first or prewarm under another name",
                model=name, state=self.models[name].state,
            )
        if not os.path.isfile(os.path.join(path, "config.json")):
            # Found in review: no fix said; a worker on another machine (`warmserve worker --controller`) loads the
            # path the controller names, which must be there too.
            raise errors.InvalidArgumentError(
                f"no checkpoint at {path} (config.json missing) on worker {self.worker_id} (host "
                f"{socket.gethostname()}): copy the checkpoint to that path on the worker's machine, or mount a file "
                "system every worker shares there", path=path
            )
        if msg.max_num_seqs < 0:  # found in review: accepted, a negative batch size for the GPU's decode graphs
            raise errors.InvalidArgumentError(
                f"max_num_seqs must be >= 0 (0: the worker's engine config), got {msg.max_num_seqs}",
                max_num_seqs=msg.max_num_seqs)
        m = _Model(name=name, path=path, state="loading", origin=(peer, msg.id), started_s=time.monotonic(),
                   tp=msg.tp, rank=msg.rank, max_num_seqs=msg.max_num_seqs)
        # Raises OutOfMemoryError at once, with the numbers, when the weights cannot fit the free pages, and
        # TensorParallelError when the model does not split tp ways.
        try:
            m.job = load_model(path, self.pool, dtype=msg.dtype, name=name, tp=msg.tp, rank=msg.rank,
                               host_cache=self.host_cache)
        except errors.OutOfMemoryError as e:
            if e.fields.get("limit") != "RLIMIT_AS":
                raise
            raise self._address_space_error(name, e) from e
        self.models[name] = m

    def _address_space_error(self, name: str, e: errors.OutOfMemoryError) -> errors.OutOfMemoryError:
        """The slot of a host pool's model could not be reserved under `ulimit -v`: the memory core's fix ("reserve
        less (reserve_bytes ...)") names an argument no server or worker user has (found in review)."""
        f, fmt = e.fields, errors.fmt_bytes
        return errors.OutOfMemoryError(
            f"model {name!r} could not reserve {fmt(f['asked_bytes'])} of address space on worker {self.worker_id}: "
            f"the process's address-space limit RLIMIT_AS is {fmt(f['limit_value'])}, {fmt(f['free_bytes'])} of it "
            f"left. A model's slot reserves its weights and, for a KV cache that may grow to the page pool's size "
            f"({fmt(self.pool.total_bytes)}), that much more, mapped only as used. Fix: raise the limit "
            "(`ulimit -v unlimited` in the shell that starts the server or worker), or give the worker a smaller pool "
            "(`cpu_worker_memory_bytes` in serve's config, `warmserve worker --memory-gib`)",
            **{**f, "model": name, "worker": self.worker_id})

    def _evict(self, peer, msg: P.Evict) -> None:
        m = self._model(msg.name)
        if m.state == "running" and self._evict_when_closed(peer, msg):
            return
        if m.state == "running":
            raise ModelStateError(
                f"model {m.name!r} is running on worker {self.worker_id}; deactivate it before evicting",
                model=m.name, state=m.state,
            )
        free_before = int(self.pool.free_bytes)
        if m.state == "loading":
            m.job.cancel()
            try:
                lm = m.job.wait(60.0)
            except Exception as e:  # normally CancelledError; either way the prewarm's asker learns the outcome
                if m.origin is not None:
                    self.emit(m.origin[0], P.Error.of(m.origin[1], as_typed(e)))
            else:  # the load finished before cancel() reached it: it holds pages, drop them
                self._close_model(lm)
                if m.origin is not None:
                    self.emit(m.origin[0], P.Error.of(m.origin[1], errors.CancelledError(
                        f"prewarm of {m.name!r} was cancelled by an Evict", model=m.name)))
        else:
            self._close_model(m.lm)
        del self.models[m.name]
        self.emit(peer, P.Evicted(id=msg.id, name=m.name, freed_bytes=int(self.pool.free_bytes) - free_before))

    def _activate(self, peer, msg: P.Activate) -> None:
        from ..engine.engine import DEFAULT_MAX_NUM_SEQS, Engine

        if msg.group_id:
            self._activate_shard(peer, msg)
            return
        m = self._activatable(msg)
        if m.lm.tp > 1:
            raise errors.InvalidArgumentError(
                f"model {m.name!r} on worker {self.worker_id} is shard {m.lm.tp_rank} of {m.lm.tp}: activate it in "
                "its process group (Activate.group_id)", model=m.name, tp=m.lm.tp)
        if msg.shared and msg.kv_blocks is None:
            raise errors.InvalidArgumentError(
                f"a shared instance needs a fixed KV share: pass kv_blocks for {m.name!r}", model=m.name
            )
        if msg.kv_target_free_blocks is not None and msg.kv_target_free_blocks < 0:
            raise errors.InvalidArgumentError(
                f"kv_target_free_blocks must be >= 0, got {msg.kv_target_free_blocks}",
                kv_target_free_blocks=msg.kv_target_free_blocks)
        if not 0 <= msg.turn_s < float("inf"):
            raise errors.InvalidArgumentError(
                f"turn_s must be a finite number of seconds >= 0 (0: no limit), got {msg.turn_s}", turn_s=msg.turn_s)
        loaded_before = self._bytes_loaded(m)
        t0 = time.perf_counter()
        ec = msg.engine or self.engine_config
        # the engine configuration's cap holds for a co-served share too (found in review: the controller's share
        # replaced it, so --max-kv-blocks 12 ran instances of 278 blocks)
        caps = [b for b in (msg.kv_blocks, ec.max_kv_blocks or None) if b is not None]
        kv_blocks = min(caps) if caps else None
        engine = Engine(m.lm, kv_blocks=kv_blocks, target_free_blocks=msg.kv_target_free_blocks,
                        max_batch_tokens=ec.max_batch_tokens, max_num_seqs=ec.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
                        map_blocks_per_step=ec.kv_map_blocks_per_step)
        activate_s = time.perf_counter() - t0
        self.instances[m.name] = _Instance(name=m.name, engine=engine, shared=msg.shared,
                                           max_kv_blocks=ec.max_kv_blocks or None, turn_s=msg.turn_s)
        m.state = "running"
        self.emit(peer, P.Activated(
            id=msg.id, name=m.name, kv_blocks=engine.kv_stats().kv_blocks_total, activate_s=activate_s,
            copied_bytes=self._bytes_loaded(m) - loaded_before, graphs_capture_s=engine.graph_capture_s,
        ))

    def _activatable(self, msg: P.Activate) -> _Model:
        """The prewarmed model an Activate names, if this worker may run it now."""
        m = self._model(msg.name)
        if m.state != "prewarmed":
            raise ModelStateError(
                f"model {m.name!r} is {m.state} on worker {self.worker_id}; only a prewarmed model can be activated",
                model=m.name, state=m.state,
            )
        if self.instances:
            running = sorted(self.instances)
            exclusive = [n for n, i in self.instances.items() if not i.shared]
            if not msg.shared or exclusive or msg.group_id:
                raise ModelStateError(
                    f"worker {self.worker_id} already runs {running}; deactivate it first, or activate every "
                    f"instance with shared=True and a kv_blocks share (tensor-parallel shards run alone)",
                    model=m.name, running=running,
                )
        return m

    def _deactivate(self, peer, msg: P.Deactivate) -> None:
        inst = self._instance(msg.name)
        if inst.follower and inst.tp.running:
            # Answered once the leader's stop (or the group's failure) ends the follower's loop: _tp_housekeeping.
            inst.tp.deactivates.append((peer, msg.id))
            return
        aborted = [key for key, (name, _) in self.generations.items() if name == inst.name]
        for key in aborted:
            self._finish_aborted(key)
        self._close_instance(inst)
        self.emit(peer, P.Deactivated(id=msg.id, name=inst.name, aborted=len(aborted)))

    def _close_instance(self, inst: _Instance, wait_s: float = 0.0) -> bool:
        """Close an instance's engine (a leader tells its followers to stop first) and keep its weights. A
        follower's engine is never closed under a step of its thread (waits wait_s at most): False then, and the
        instance stays listed, its model running (nothing binds or maps them) until _tp_housekeeping closes it
        once the thread has ended (at the leader's next plan, which it answers as a lost rank)."""
        # Not again when a close is retried (its release failed): the followers stopped at the first (found in
        # review: the second stop plan waited out the group's timeout)
        if inst.tp is not None and not inst.follower and inst.broken is None and not inst.engine.closed:
            try:
                inst.tp.send(inst.engine, stop=True)
            except Exception as e:  # a rank is gone already: nobody to tell
                log.info("stop of tensor-parallel instance %s not delivered: %s", inst.name, e)
        if not inst.follower:
            inst.engine.close()
        elif not inst.tp.close_engine(wait_s):
            return False
        self.instances.pop(inst.name, None)
        m = self.models.get(inst.name)
        if m is not None:
            m.state = "prewarmed"
            if inst.tp is not None:
                # Unbind the group, so a LeaveGroup frees it then (gloo's teardown takes milliseconds), not the
                # next activation that binds another group.
                m.lm.parallel = None
        self._answer_deactivates(inst)
        self._evict_deferred(inst)
        return True

    def _generate(self, peer, msg: P.Generate) -> None:
        key = (peer, msg.id)
        if key in self.generations:
            # The Error goes out under the id the two share and ends its stream for the sender: the first is stopped
            # too (found in review: it ran on unread to max_tokens, holding its KV blocks).
            self._finish_aborted(key, emit=False)
            raise errors.ProtocolError(f"request id {msg.id} is already in flight from this peer: both are stopped; "
                                       "give each request an id of its own", request_id=msg.id)
        inst = self._instance(msg.model)
        sampling = msg.sampling
        if inst.tp is not None:
            self._check_leader(inst)
            if not sampling.greedy and sampling.seed is None:
                # Every rank samples from the same all-gathered logits: the same seed gives the same token.
                sampling = msgspec.structs.replace(sampling, seed=random.getrandbits(63))
        # Found in review: 60M token ids (a 60 MiB message) held the engine loop 6.5 s in the engine's checks of each
        # id before the length refused them; every generation on the worker stood still meanwhile. len() is free.
        held, limit = len(msg.prompt_ids) + len(msg.output_ids), inst.engine.max_context
        if held >= limit:
            raise errors.PromptTooLongError(
                f"prompt of {len(msg.prompt_ids)} tokens (and {len(msg.output_ids)} generated already) leaves no room "
                f"for one more token in the context of {limit} tokens of {inst.name!r}: shorten the prompt",
                prompt_tokens=len(msg.prompt_ids), output_tokens=len(msg.output_ids),
                max_tokens=msg.sampling.max_tokens, max_context=limit)  # the engine's own fields, and the done ones
        rid = str(self._next_rid)
        self._next_rid += 1
        # The engine checks the prompt: empty, token ids outside the vocabulary, prompt + max_tokens over the
        # context (PromptTooLongError with the numbers).
        inst.engine.add_request(rid, msg.prompt_ids, sampling, msg.output_ids)
        if inst.tp is not None:
            inst.tp.added(rid, msg.prompt_ids, sampling, msg.output_ids)
        inst.requests[rid] = key
        self.generations[key] = (inst.name, rid)

    def _abort(self, peer, msg: P.Abort) -> None:
        key = (peer, msg.request_id)
        if key in self.generations:
            self._finish_aborted(key)
        self.emit(peer, P.Ok(id=msg.id))

    def _set_kv_target(self, peer, msg: P.SetKvTarget) -> None:
        inst = self._instance(msg.model)
        if inst.tp is not None:
            self._check_leader(inst)  # the leader passes the target on to the other ranks, in order
        if msg.free_blocks < 0:
            raise errors.InvalidArgumentError(
                f"free_blocks must be >= 0, got {msg.free_blocks}", free_blocks=msg.free_blocks
            )
        try:
            inst.engine.set_kv_target_free_blocks(msg.free_blocks)
        finally:
            # The other ranks take the target whatever the leader's unmap did (found in review: one that failed
            # part way kept it from them, and the ranks' caches went out of step); the leader's own shrink is
            # retried after its next step.
            if inst.tp is not None:
                inst.tp.kv_target(msg.free_blocks)
        self.emit(peer, P.KvTargetSet(id=msg.id, model=inst.name, kv=inst.engine.kv_stats()))

    def _dedicate(self, peer, msg: P.Dedicate) -> None:
        inst = self._instance(msg.model)
        others = sorted(n for n in self.instances if n != inst.name)
        if not inst.shared or others:
            raise ModelStateError(
                f"only a shared instance alone on its worker becomes dedicated; {inst.name!r} on worker "
                f"{self.worker_id} is {'shared' if inst.shared else 'dedicated already'}, beside {others}: "
                "deactivate the others first", model=inst.name, running=others)
        # Up to the engine configuration's cap, as a dedicated activation would have it (found in review: the
        # whole slot, past max_kv_blocks), else all the pool holds after the weights; never below the share it
        # has: a share may pass what the pool holds, and dedicating such an instance was refused as lowering it.
        cap = inst.max_kv_blocks
        want = inst.engine.lm.kv_capacity_blocks if cap is None else cap
        kv = inst.engine.raise_kv_cap(max(want, inst.engine.kv.total_blocks))
        inst.shared = False
        self.emit(peer, P.KvTargetSet(id=msg.id, model=inst.name, kv=kv))

    def _stats(self, peer, msg: P.GetStats) -> None:
        self.emit(peer, self.stats(msg.id, pages=msg.pages))

    def _host_group_store(self, peer, msg: P.HostGroupStore) -> None:
        self.emit(peer, P.GroupStoreHosted(id=msg.id, port=self.groups.host_store()))

    def _join_group(self, peer, msg: P.JoinGroup) -> None:
        self.groups.join(peer, msg)

    def _leave_group(self, peer, msg: P.LeaveGroup) -> None:
        for inst in [i for i in self.instances.values() if i.tp is not None and i.tp.group.group_id == msg.group_id]:
            self._tp_failed(inst, errors.WorkerLostError(
                f"group {msg.group_id!r} was dropped: a rank of the instance of {inst.name!r} is gone",
                group_id=msg.group_id))
            self._close_instance(inst)  # a follower mid-step: closed by _tp_housekeeping once its thread ends
        self.groups.leave(msg.group_id)
        self.emit(peer, P.Ok(id=msg.id))

    def _heartbeat(self, peer, msg: P.Heartbeat) -> None:
        """Liveness is tracked by the transport; nothing to answer."""

    def _shutdown(self, peer, msg: P.Shutdown) -> None:
        self.close()
        self.stopping = True
        self.emit(peer, P.Ok(id=msg.id))

    _HANDLERS = {
        P.Prewarm: _prewarm, P.Evict: _evict, P.Activate: _activate, P.Deactivate: _deactivate,
        P.Generate: _generate, P.Abort: _abort, P.SetKvTarget: _set_kv_target, P.Dedicate: _dedicate,
        P.GetStats: _stats, P.Heartbeat: _heartbeat, P.Shutdown: _shutdown, P.HostGroupStore: _host_group_store,
        P.JoinGroup: _join_group, P.LeaveGroup: _leave_group,
    }

    # ------------------------------------------------------------------ stats

    def stats(self, id: int = 0, *, pages: bool = False) -> P.Stats:
        page_bytes = self._page_bytes()
        models = []
        for m in self.models.values():
            st = P.ModelState(name=m.name, path=m.path, state=m.state, loaded_bytes=m.loaded_bytes,
                              total_bytes=m.total_bytes, tp=m.tp, rank=m.rank)
            if m.lm is not None:
                st.weight_bytes = int(m.lm.weight_bytes)
                st.pages = weight_pages(m.lm, page_bytes)
                st.max_context = int(m.lm.max_context)
                if pages:
                    st.physical_pages = [int(p) for p in m.lm.slot.physical_pages(0, st.pages)]
            models.append(st)
        instances = []
        for i in self.instances.values():
            kv = i.engine.kv_stats()
            mapper = i.engine.kv.mapper
            instances.append(P.WorkerInstance(name=i.name, in_flight=len(i.requests), kv=kv, shared=i.shared,
                                              kv_pages=mapper.pages_mapped if mapper is not None else 0,
                                              group_id=i.tp.group.group_id if i.tp is not None else "",
                                              rank=i.tp.group.rank if i.tp is not None else 0,
                                              running=i.engine.num_running, decode_step_s=i.engine.decode_meter.step_s,
                                              decode_batch=i.engine.decode_meter.batch,
                                              decode_steps=i.engine.decode_meter.steps))
        return P.Stats(
            id=id, worker_id=self.worker_id, device=self.device, pid=os.getpid(),
            uptime_s=time.monotonic() - self.started_s, pool=self.pool_stats(), models=models,
            instances=instances, in_flight=len(self.generations), groups=sorted(self.groups.groups),
            host_cache=self.host_cache.stats() if self.host_cache is not None else {}, draining=self.draining,
            drain_left_s=max(0.0, self.drain_until_s - time.monotonic()) if self.drain_until_s is not None else 0.0,
            stopping=self.stop_signalled, memory=process_memory(),
        )

    def pool_stats(self) -> P.PoolStats:
        """The pool's counters (free/total bytes, bytes_loaded, ...) and its pages by slot tag."""
        return P.PoolStats.of(self.pool.stats(), self.pool.pages_by_tag())

    def _page_bytes(self) -> int:
        return int(self.pool.page_bytes)

    @staticmethod
    def _bytes_loaded(m: _Model) -> int:
        """Bytes loaded into the model's own slot so far: an activation's copies are the change in it. Not the
        pool's counter, which also counts other models' loads (a prewarm that finished during the activation was
        reported as copied by it: found in review)."""
        return int(m.lm.slot.load_bytes)

    # ------------------------------------------------------------------ helpers

    def _finish_aborted(self, key: tuple, emit: bool = True) -> None:
        entry = self.generations.pop(key, None)
        if entry is None:  # its peer was dropped while we were aborting others
            return
        name, rid = entry
        inst = self.instances[name]
        inst.requests.pop(rid, None)
        self._engine_abort(inst, rid)
        if emit:
            self.emit(key[0], P.Tokens(id=key[1], token_ids=[], finished=True, finish_reason="abort"))

    def _engine_abort(self, inst: _Instance, rid: str) -> None:
        if inst.engine.abort(rid) and inst.tp is not None and inst.broken is None:
            inst.tp.aborted(rid)  # the other ranks abort it before their next step, as the leader did

    def _model(self, name: str) -> _Model:
        m = self.models.get(name)
        if m is None:
            raise errors.UnknownModelError(
                f"model {name!r} is not on worker {self.worker_id} (it has {sorted(self.models)}): prewarm it first",
                model=name, models=sorted(self.models),
            )
        return m

    def _instance(self, name: str) -> _Instance:
        inst = self.instances.get(name)
        if inst is None:
            m = self._model(name)
            raise ModelStateError(
                f"model {name!r} is {m.state} on worker {self.worker_id}, not running: activate it first",
                model=name, state=m.state,
            )
        return inst


#: /proc/self/status's lines a Stats reports (``P.Stats.memory``), by the name it gives each.
_STATUS_MEMORY = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}


def process_memory() -> dict[str, int]:
    """This process's resident memory in bytes by kind (``_STATUS_MEMORY``); {} where /proc does not say. Found in
    the memory review: a CPU worker held 272-490 MiB beyond its pool, shown nowhere, so an operator sizing a
    container's limit had to read it from the host."""
    out = {}
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                key, _, rest = line.decode("ascii", "replace").partition("\t")
                name = _STATUS_MEMORY.get(key)
                if name is not None:
                    out[name] = int(rest.split()[0]) * 1024  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        return {}
    return out
