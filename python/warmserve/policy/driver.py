"""The policy driver: the one loop around the policy, shared by the live controller, the simulator and tests.

``PolicyDriver`` owns the cluster-state bookkeeping (``ClusterState``), the per-model queues of waiting requests
(``state.queues``: the queue is the count), the weights that stopped instances leave on their GPUs, the route
loop, the policy's request hooks and the order of a tick. It acts only through an ``Executor``, which carries the
actions out (on real workers, on simulated ones, or at once) and reports back by calling the driver's ``report``
methods. See the ``warmserve.policy`` docstring for the whole contract.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

from warmserve.errors import InvalidArgumentError, UnknownModelError, WarmServeError, WorkerLostError
from warmserve.policy import actions as A
from warmserve.policy.config import PolicyConfig
from warmserve.policy.gpu_masks import MAX_GPUS_PER_SERVER
from warmserve.policy.state import (ClusterState, GpuState, InstanceState, PrewarmState, ServerState, kv_blocks_for,
                                    least_loaded)

#: Consecutive failed starts of a model after which its waiting requests fail with the reason.
START_ATTEMPTS = 3
#: Pause after the n-th failed start of a model before the next one: min(cap, base * 2**n), seconds.
START_BACKOFF_BASE_S = 0.25
START_BACKOFF_CAP_S = 5.0


@dataclass(frozen=True, slots=True)
class KeptWeights:
    """Weights a stopped instance left resident on its GPUs: a ``Prewarm`` with ``kept_from=instance_id`` takes
    them with no copy, and so does a cold ``StartInstance`` of the same model on exactly those GPUs (route() may
    start one before the next tick); the driver drops them at the end of the tick that follows (or when something
    else is placed on those GPUs)."""

    instance_id: str
    model: str
    gpus: tuple[int, ...]


class Executor(Protocol):
    """What carries the driver's decisions out. Every method returns at once; what takes time (a load, a start, a
    request) is reported back later through the driver's ``report`` methods (``prewarm_progress``,
    ``prewarm_loaded``, ``prewarm_failed``, ``instance_ready``, ``instance_failed``, ``request_finished``,
    ``set_kv``, ``lose_gpus``). The driver has updated ``state`` before each call."""

    def sync(self, now_s: float) -> None:
        """A tick begins: bring measured fields of ``state`` up to date (prewarm progress, KV block counts)."""

    def settle(self, now_s: float) -> None:
        """The tick's actions are all applied; the driver routes the queues next."""

    def load_prewarm(self, prewarm: PrewarmState, now_s: float) -> None:
        """Copy ``prewarm.model``'s weights onto ``prewarm.gpus``; report progress, then loaded (or failed)."""

    def keep_prewarm(self, prewarm: PrewarmState, kept: KeptWeights, now_s: float) -> None:
        """The weights ``kept`` left resident are now ``prewarm`` (loaded already: nothing to copy)."""

    def drop_prewarm(self, prewarm: PrewarmState, evicted: bool, now_s: float) -> None:
        """Release a prewarm's pages (loaded or still loading). ``evicted``: the policy evicted it for room (an
        ``Evict``, or a ``StartInstance.evict``), rather than cancelled a plan."""

    def drop_kept(self, kept: KeptWeights, now_s: float) -> None:
        """Release weights a stopped instance left and no prewarm took."""

    def start_instance(self, inst: InstanceState, act: A.StartInstance, prewarm: PrewarmState | None,
                       now_s: float) -> None:
        """Create ``inst`` (from ``prewarm``'s weights when given, else loaded cold); report ready or failed."""

    def stop_instance(self, inst: InstanceState, now_s: float) -> None:
        """``inst`` has drained and left the state: free its GPUs, leaving its weights resident (kept)."""

    def migrate_requests(self, inst: InstanceState, now_s: float) -> list:
        """Take every request in flight off ``inst`` (``stop_instance`` follows: it stops running them) and return
        them, oldest first, as (request, prompt tokens its resumption prefills: its prompt and the tokens it has
        out; None: its prompt as submitted, when it has none out). A later ``send`` of such a request resumes it
        after those tokens. Nothing may be sent to a worker here: a failed send would lose the worker in the
        middle of the driver's call."""

    def set_kv_target(self, inst: InstanceState, free_blocks: int, now_s: float) -> None:
        """Map or unmap KV pages so that ``free_blocks`` blocks stay mapped beyond those in use."""

    def dedicate_instance(self, inst: InstanceState, now_s: float) -> None:
        """``inst`` (co-served, alone on its GPUs now) is dedicated: lift its KV cap to ``inst.kv_blocks_total``
        (raised by the driver already; an executor may report the measured figure with ``set_kv``)."""

    def send(self, request, inst: InstanceState, now_s: float) -> None:
        """Run ``request`` on ``inst``; report ``request_finished`` when it ends."""

    def fail(self, request, error: BaseException, now_s: float) -> None:
        """A waiting request will never be routed (its model cannot start, or the cluster is gone): tell its
        client ``error``."""


class PolicyDriver:
    """Drives one policy over one ``ClusterState`` through one ``Executor``. Not thread-safe: one caller."""

    def __init__(self, policy, state: ClusterState, executor: Executor):
        self.policy = policy
        self.state = state
        self.executor = executor
        for m in state.models:
            state.queues.setdefault(m, deque())
        #: Weights stopped instances left on their GPUs, by instance id.
        self.kept: dict[str, KeptWeights] = {}
        #: Whether a cold start of a model on its own kept weights is made a hit: only for a policy that prewarms
        #: weights. A vanilla autoscaler's (and engine-prewarm-only's) stopped engine takes its weights with it.
        self._hits_on_kept = bool(getattr(getattr(policy, "cfg", None), "prewarm", False))
        #: reroute()'s order among the instances serving alone: route()'s own (``state.least_loaded``); a policy
        #: with no configuration gets the configuration's default.
        self._least_loaded = least_loaded(bool(getattr(getattr(policy, "cfg", None), "route_least_prefill",
                                                       PolicyConfig.route_least_prefill)))
        #: Server key (a host name, or the server id) -> indices in state.servers: a host with more GPUs than one
        #: server entry holds (MAX_GPUS_PER_SERVER, what the placement handles) has several entries.
        self._server_of: dict = {s.server_id: [i] for i, s in enumerate(state.servers)}
        self._ticked = False
        #: Model -> time before which no new start is tried (after a failed one), and consecutive failures.
        self._backoff_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        #: Request -> [prompt tokens, instance id or None while it waits]: requests submitted with prompt tokens
        #: whose prefill has not completed. They feed ``state.queued_prompt_tokens`` and each instance's
        #: ``prefill_tokens_pending`` (the prefill load the policy scales on).
        self._prefill: dict = {}
        for m in state.models:
            state.queued_prompt_tokens.setdefault(m, 0)
        #: Actions being applied (nested: a route's start, a tick's list), and whether a GPU lost meanwhile wants
        #: the queues routed once they are done (``apply``).
        self._applying = 0
        self._route_due = False

    # ---- requests -----------------------------------------------------------------------------------------

    def submit(self, model: str, request, now_s: float, *, prompt_tokens: int = 0) -> None:
        """A request arrived: queue it and route the model's queue. ``prompt_tokens``: its prompt's length,
        tokens; it counts as prefill load (``state.queued_prompt_tokens``, then the instance's
        ``prefill_tokens_pending``) until the executor reports ``prefill_done`` (or the request ends). A request
        submitted with prompt tokens must be hashable (the driver keys its bookkeeping by it)."""
        q = self.state.queues.get(model)
        if q is None:
            raise UnknownModelError(f"model {model!r} is not served; known: {sorted(self.state.models)}", model=model)
        if prompt_tokens < 0:
            raise InvalidArgumentError(f"prompt_tokens must be >= 0, got {prompt_tokens}", prompt_tokens=prompt_tokens)
        q.append(request)
        if prompt_tokens:
            self._prefill[request] = [prompt_tokens, None]
            self.state.queued_prompt_tokens[model] = self.state.queued_prompt_tokens.get(model, 0) + prompt_tokens
        self.policy.on_request_start(model, now_s)
        try:
            self.route(model, now_s)
        except BaseException:
            # The caller gets the error and never the request: found in review, one left queued (a policy bug
            # raised in route) stayed there as a ghost, counted by the queue and the policy until it timed out.
            self.withdraw(model, request, now_s)
            raise

    def withdraw(self, model: str, request, now_s: float) -> bool:
        """Take a waiting request out of its queue (aborted, timed out); False when it is not waiting."""
        try:
            self.state.queues[model].remove(request)
        except ValueError:
            return False
        self._forget_prefill(model, request)
        self.policy.on_request_done(model, now_s)
        return True

    def fail_waiting(self, model: str, error: BaseException, now_s: float) -> None:
        """Fail every waiting request of ``model`` with ``error`` (through ``executor.fail``)."""
        q = self.state.queues[model]
        while q:
            req = q.popleft()
            self._forget_prefill(model, req)
            self.policy.on_request_done(model, now_s)
            self.executor.fail(req, error, now_s)

    def request_finished(self, model: str, instance_id: str | None, now_s: float, *, route: bool = True,
                         request=None) -> None:
        """A routed request ended (finished, failed or aborted) on ``instance_id`` (None or unknown: its instance
        is gone). A draining instance with nothing left in flight stops here. ``route``: route the model's queue
        now (a caller that finishes several requests at once routes once, after the last). ``request``: the
        request, so that prefill tokens it still counted (it ended before its first token) are released."""
        if request is not None and self._prefill:
            self._forget_prefill(model, request)
        inst = self.state.instances.get(instance_id) if instance_id is not None else None
        if inst is not None:
            inst.in_flight -= 1
            if inst.draining and inst.in_flight <= 0:
                self._finish_stop(inst, now_s)
        self.policy.on_request_done(model, now_s)
        if route:
            self.route(model, now_s)

    def reroute(self, model: str, request, refused_on: str, now_s: float, *, prompt_tokens: int | None = None) -> bool:
        """``request``, sent to instance ``refused_on``, was refused there for want of room (``NoRoomHereError``:
        its KV share, or what its pool frees beside the weights of the instances co-served there): send it to the
        least-loaded ready instance of ``model`` that serves alone on its GPUs (it holds whatever the model's
        context allows), past any route cap, since the alternative is an error. Only from a refuser that shares a
        GPU: an instance alone that refused has no better peer, so a request moves once at most. True when sent;
        False (nothing changed): the caller fails it and calls ``request_finished``. ``prompt_tokens``: what its
        next instance prefills when it had tokens out (its prompt and them), as ``lose_gpus``'s requeue takes it;
        None: its prompt as submitted. The caller takes the request off the refuser's books first: the stop of a
        draining refuser below may lose its worker, whose requests are started over."""
        st = self.state
        inst = st.instances.get(refused_on)
        if inst is None or not st.co_residents(inst):
            return False
        alone = [i for i in st.instances.values() if i.model == model and i is not inst and i.ready
                 and not i.draining and not st.co_residents(i)]
        target = min(alone, key=self._least_loaded, default=None)
        if target is None:
            return False
        self._requeue(model, [(request, prompt_tokens)])  # its prompt counts as waiting again; _send moves it on
        self.state.queues[model].popleft()
        inst.in_flight -= 1
        self._send(request, target.instance_id, now_s)
        # after the send (found in review: a stop that lost the refuser's worker started the request over, and it
        # was sent twice), and only if the refuser is still there to stop
        if st.instances.get(refused_on) is inst and inst.draining and inst.in_flight <= 0:
            self._finish_stop(inst, now_s)
        return True

    def route(self, model: str, now_s: float) -> None:
        """Route ``model``'s waiting requests, oldest first, until the policy says wait. After one creation (a
        ``StartInstance``, or a ``ReviveInstance`` of a draining one) the loop goes on asking: ready instances
        may still take requests while the new one starts (the policy decides); a second non-Route answer ends
        the loop."""
        q = self.state.queues[model]
        st = self.state
        created = False
        while q:
            if self._backoff_until and self._backing_off(model, now_s):
                return
            act = self.policy.route(st, model, now_s)
            if act is None:
                return
            if type(act) is A.Route:
                self._send(q.popleft(), act.instance_id, now_s)
            elif created:
                return
            else:  # a creation or a revival: the request waits for it unless the policy routes it
                n = len(st.instances)
                self.apply(act, now_s)
                if type(act) is A.StartInstance and len(st.instances) == n:
                    return  # nothing was created (its start is backing off)
                created = True

    def route_all(self, now_s: float) -> None:
        for m, q in self.state.queues.items():
            if q:
                self.route(m, now_s)

    def _send(self, request, instance_id: str, now_s: float) -> None:
        inst = self.state.instances.get(instance_id)
        if inst is None:
            raise InvalidArgumentError(f"the policy routed to unknown instance {instance_id!r}", instance=instance_id)
        inst.in_flight += 1
        if self._prefill:
            entry = self._prefill.get(request)
            if entry is not None and entry[1] is None:
                q = self.state.queued_prompt_tokens
                q[inst.model] = max(0, q.get(inst.model, 0) - entry[0])
                inst.prefill_tokens_pending += entry[0]
                entry[1] = instance_id
        self.executor.send(request, inst, now_s)

    def prefill_done(self, request, now_s: float) -> None:
        """The executor's report that ``request``'s prefill completed (its first token is out): its prompt tokens
        stop counting as prefill load. Unknown requests (submitted without prompt tokens) are ignored."""
        entry = self._prefill.pop(request, None) if self._prefill else None
        if entry is not None and entry[1] is not None:
            inst = self.state.instances.get(entry[1])
            if inst is not None:
                inst.prefill_tokens_pending = max(0, inst.prefill_tokens_pending - entry[0])

    def _forget_prefill(self, model: str, request) -> None:
        """``request`` left (withdrawn, failed, ended): release the prompt tokens it still counted."""
        entry = self._prefill.pop(request, None) if self._prefill else None
        if entry is None:
            return
        if entry[1] is None:
            q = self.state.queued_prompt_tokens
            q[model] = max(0, q.get(model, 0) - entry[0])
        else:
            inst = self.state.instances.get(entry[1])
            if inst is not None:
                inst.prefill_tokens_pending = max(0, inst.prefill_tokens_pending - entry[0])

    def _requeue(self, model: str, moved) -> None:
        """(request, prompt tokens) pairs that start over go to the front of ``model``'s queue, in the order
        given (oldest first); their prompt tokens count as waiting prefill load. ``None`` tokens: the request's
        prompt as submitted, still counted (it had no token out)."""
        queued = self.state.queued_prompt_tokens
        for req, tokens in moved:
            entry = self._prefill.get(req) if self._prefill else None
            if tokens is None:
                if entry is None or entry[1] is None:
                    continue
                inst = self.state.instances.get(entry[1])
                if inst is not None:
                    inst.prefill_tokens_pending = max(0, inst.prefill_tokens_pending - entry[0])
                entry[1] = None
                queued[model] = queued.get(model, 0) + entry[0]
                continue
            self._forget_prefill(model, req)
            if tokens:
                self._prefill[req] = [tokens, None]
                queued[model] = queued.get(model, 0) + tokens
        self.state.queues[model].extendleft(reversed([req for req, _ in moved]))

    def _drop_prefill_of(self, instance_ids: set) -> None:
        """Instances left the state: requests still counted on them are gone with them."""
        if self._prefill:
            for req in [r for r, e in self._prefill.items() if e[1] in instance_ids]:
                del self._prefill[req]

    # ---- the tick -------------------------------------------------------------------------------------------

    def tick(self, now_s: float) -> None:
        """The periodic decision, in this order: the executor syncs measured state; the policy's actions are
        applied in order; kept weights no Prewarm took are dropped; the executor settles; the queues are routed."""
        self._ticked = True
        self.executor.sync(now_s)
        self._applying += 1
        try:
            for act in self.policy.tick(self.state, now_s):
                self.apply(act, now_s)
        finally:
            self._applying -= 1
        self._route_due = False  # the routing below is the one a loss during the actions wanted
        for kept in list(self.kept.values()):
            del self.kept[kept.instance_id]
            self.executor.drop_kept(kept, now_s)
        self.executor.settle(now_s)
        self.route_all(now_s)

    def apply(self, act, now_s: float) -> None:
        """Carry out one policy action: update ``state`` and tell the executor. A GPU lost while actions are
        applied (``lose_gpus`` from a send that failed) routes the queues only once the outermost one is done:
        found in review, routing at once started instances on the GPUs that the tick's next actions (or the start
        being applied) were placing on, two dedicated instances on one GPU."""
        self._applying += 1
        try:
            self._apply(act, now_s)
        finally:
            self._applying -= 1
        if self._route_due and not self._applying:
            self._route_due = False
            self.route_all(now_s)

    def _apply(self, act, now_s: float) -> None:
        st, ex = self.state, self.executor
        kind = type(act)
        if kind is A.Route:
            q = st.queues.get(act.model)
            if q:
                self._send(q.popleft(), act.instance_id, now_s)
        elif kind is A.Prewarm:
            if self._any_gone(act.gpus):
                return  # see _any_gone
            if act.prewarm_id in st.prewarms:
                raise InvalidArgumentError(f"prewarm id {act.prewarm_id!r} exists already", prewarm=act.prewarm_id)
            p = st.prewarms[act.prewarm_id] = PrewarmState(act.prewarm_id, act.model, tuple(act.gpus), 0.0, act.score)
            kept = self.kept.get(act.kept_from) if act.kept_from is not None else None
            if kept is not None and kept.model == p.model and kept.gpus == p.gpus:
                del self.kept[kept.instance_id]
                p.progress = 1.0
                ex.keep_prewarm(p, kept, now_s)
            else:
                self._drop_kept_on(p.gpus, now_s)
                ex.load_prewarm(p, now_s)
        elif kind is A.Evict or kind is A.CancelPrewarm:
            p = st.prewarms.pop(act.prewarm_id, None)
            if p is not None:  # a failed load may have removed it since the policy looked
                ex.drop_prewarm(p, kind is A.Evict, now_s)
        elif kind is A.StartInstance:
            if self._backoff_until and self._backing_off(act.model, now_s):
                return  # its last start failed moments ago; the policy asks again on a later tick (before the
                # evictions: found in review, a refused start dropped the prewarms it would have replaced)
            if self._any_gone(act.gpus):
                # Nothing is created, as while backing off: the waiting requests stay queued (route() stops at a
                # start that created nothing) and the next tick places the start on live GPUs. Not counted as a
                # failure of the model: a loss is not its fault (instance_failed, WorkerLostError).
                return
            for pid in act.evict:
                p = st.prewarms.pop(pid, None)
                if p is not None:
                    ex.drop_prewarm(p, True, now_s)
            gpus = tuple(act.gpus)
            kept = None
            if act.prewarm_id is None and self.kept and self._hits_on_kept:  # its own weights: a hit, not a load
                kept = next((k for k in self.kept.values() if k.model == act.model and k.gpus == gpus), None)
                if kept is not None:
                    del self.kept[kept.instance_id]
            self._drop_kept_on(gpus, now_s)
            if self._any_gone(gpus):  # an eviction or a drop just lost the worker (its message could not be sent)
                return
            pw = st.prewarms.pop(act.prewarm_id, None) if act.prewarm_id is not None else None
            if kept is not None:
                pw = PrewarmState(f"{act.instance_id}/kept", act.model, gpus, 1.0, 0.0)
                ex.keep_prewarm(pw, kept, now_s)
                act = replace(act, prewarm_id=pw.prewarm_id)
            inst = st.instances[act.instance_id] = InstanceState(
                act.instance_id, act.model, gpus, created_s=now_s,
                kv_blocks_total=kv_blocks_for(st, act.model, gpus, act.kv_fraction))
            ex.start_instance(inst, act, pw, now_s)
        elif kind is A.StopInstance:
            inst = st.instances.get(act.instance_id)
            if inst is not None:
                inst.draining = True
                if inst.in_flight <= 0:
                    self._finish_stop(inst, now_s)
        elif kind is A.Migrate:
            inst = st.instances.get(act.instance_id)
            if inst is not None:  # stopped now: the executor hands every request it runs back
                inst.draining = True
                self._requeue(inst.model, list(ex.migrate_requests(inst, now_s)))
                inst.in_flight = 0
                if st.instances.get(inst.instance_id) is inst:  # an executor that lost the worker meanwhile
                    self._finish_stop(inst, now_s)
        elif kind is A.ReviveInstance:
            inst = st.instances.get(act.instance_id)
            if inst is not None:  # it may have drained and stopped since the policy looked
                inst.draining = False
        elif kind is A.Dedicate:
            inst = st.instances.get(act.instance_id)
            if inst is not None and not inst.draining:
                inst.kv_blocks_total = max(inst.kv_blocks_total, kv_blocks_for(st, inst.model, inst.gpus))
                ex.dedicate_instance(inst, now_s)
        elif kind is A.SetKvTarget:
            inst = st.instances.get(act.instance_id)
            if inst is not None:
                inst.kv_free_target = act.free_blocks
                ex.set_kv_target(inst, act.free_blocks, now_s)
        else:
            raise InvalidArgumentError(f"not a policy action: {act!r}", action=type(act).__name__)

    def _any_gone(self, gpus) -> bool:
        """Whether a GPU of ``gpus`` was lost since the policy chose them. An action of a tick is applied after the
        actions before it, and applying one may lose a worker (a send that fails runs the loss handling,
        ``lose_gpus``, in the middle of the tick). Found in review: a scale-in's StopInstance lost its worker that
        way, and the Prewarm that kept its weights (the next action) was placed on the gone GPU; every later tick
        then failed (no board has a gone GPU), for good."""
        gs = self.state.gpus
        return any(gs[g].gone for g in gpus)

    def _finish_stop(self, inst: InstanceState, now_s: float) -> None:
        del self.state.instances[inst.instance_id]
        self._drop_prefill_of({inst.instance_id})
        self.kept[inst.instance_id] = KeptWeights(inst.instance_id, inst.model, inst.gpus)
        self.executor.stop_instance(inst, now_s)

    def _drop_kept_on(self, gpus: tuple[int, ...], now_s: float) -> None:
        """Something else goes onto ``gpus``: weights kept there are dropped first."""
        if not self.kept:
            return
        for kept in [k for k in self.kept.values() if set(k.gpus) & set(gpus)]:
            del self.kept[kept.instance_id]
            self.executor.drop_kept(kept, now_s)

    def _backing_off(self, model: str, now_s: float) -> bool:
        until = self._backoff_until.get(model)
        if until is None or until <= now_s:
            return False
        return not any(i.ready for i in self.state.instances.values() if i.model == model)

    # ---- reports from the executor --------------------------------------------------------------------------

    def prewarm_progress(self, prewarm_id: str, fraction: float) -> None:
        p = self.state.prewarms.get(prewarm_id)
        if p is not None:
            p.progress = fraction

    def prewarm_loaded(self, prewarm_id: str) -> None:
        self.prewarm_progress(prewarm_id, 1.0)

    def prewarm_failed(self, prewarm_id: str) -> PrewarmState | None:
        """A load failed: the prewarm leaves the state (the executor has released what it held)."""
        return self.state.prewarms.pop(prewarm_id, None)

    def set_kv(self, instance_id: str, *, total: int | None = None, used: int | None = None,
               mapped: int | None = None, wanted: int | None = None) -> None:
        """KV block counts of an instance as measured (``None``: unchanged)."""
        inst = self.state.instances.get(instance_id)
        if inst is None:
            return
        if wanted is not None:
            inst.kv_blocks_wanted = wanted
        if total is not None:
            inst.kv_blocks_total = total
        if used is not None:
            inst.kv_blocks_used = used
        if mapped is not None:
            inst.kv_blocks_mapped = mapped

    def instance_ready(self, instance_id: str, now_s: float, *, kv_blocks_total: int | None = None,
                       kv_blocks_mapped: int | None = None, max_seqs: int = 0) -> bool:
        """An instance can serve. The driver ticks right away (once ticking has begun; before, it routes the
        model's queue). ``max_seqs``: its engine's max_num_seqs (``InstanceState.max_seqs``; 0: not known). False
        when the instance is no longer in the state (lost or stopped while starting)."""
        inst = self.state.instances.get(instance_id)
        if inst is None:
            return False
        inst.ready_s = now_s
        inst.max_seqs = max_seqs
        self.set_kv(instance_id, total=kv_blocks_total, mapped=kv_blocks_mapped)
        self._failures.pop(inst.model, None)
        self._backoff_until.pop(inst.model, None)
        self.state.failed_starts.pop(inst.model, None)
        if self._ticked:
            self.tick(now_s)
        else:
            self.route(inst.model, now_s)
        return True

    def instance_failed(self, instance_id: str, now_s: float, error: BaseException) -> None:
        """An instance could not start (the executor has released what it held). Starts of its model pause,
        longer after each failure; after START_ATTEMPTS in a row with no instance of the model ready, its waiting
        requests fail with the reason."""
        inst = self.state.instances.pop(instance_id, None)
        if inst is not None:
            self._drop_prefill_of({instance_id})
        if inst is None or isinstance(error, WorkerLostError):
            return  # lost with its worker: not the model's fault, and the loss re-routes the requests
        m = inst.model
        self.state.failed_starts[m] = self.state.failed_starts.get(m, frozenset()) | frozenset(inst.gpus)
        n = self._failures[m] = self._failures.get(m, 0) + 1
        self._backoff_until[m] = now_s + min(START_BACKOFF_CAP_S, START_BACKOFF_BASE_S * 2 ** n)
        if n >= START_ATTEMPTS and not any(i.ready for i in self.state.instances.values() if i.model == m):
            err = WarmServeError(f"could not start an instance of {m!r} ({n} attempts): {error}", attempts=n)
            status = getattr(error, "http_status", 500)
            err.http_status = status if status >= 500 else 503
            self.fail_waiting(m, err, now_s)

    # ---- membership -----------------------------------------------------------------------------------------

    def add_gpus(self, server_key, capacities_bytes: list[int]) -> list[int]:
        """GPUs joined on the server ``server_key`` (a new key: a new server). Returns their ids: the next free
        ones, ``len(state.gpus)`` onwards (ids are never reused). Each goes to the key's first server entry with
        fewer than MAX_GPUS_PER_SERVER live GPUs, else to a new entry of the key (found in review: a ninth GPU made
        every later tick raise); an instance or prewarm never spans two entries. The caller routes the queues next
        (``route_all``), once it can reach the new GPUs by these ids."""
        st = self.state
        entries = self._server_of.setdefault(server_key, [])
        ids = []
        for cap in capacities_bytes:
            s = next((i for i in entries if len(st.servers[i].gpu_ids) < MAX_GPUS_PER_SERVER), None)
            if s is None:
                s = len(st.servers)
                entries.append(s)
                st.servers.append(ServerState(s, ()))
            g = len(st.gpus)
            st.gpus.append(GpuState(g, s, int(cap)))
            st.servers[s].gpu_ids = st.servers[s].gpu_ids + (g,)
            ids.append(g)
        return ids

    def lose_gpus(self, gpu_ids, now_s: float, requeue=()) -> None:
        """GPUs were lost with everything on them. Their instances, prewarms and kept weights leave the state
        (the executor has nothing left to release); the GPUs stay in ``state.gpus`` marked ``gone`` (ids of the
        others do not move). ``requeue``: requests that were running there and start over elsewhere, oldest first, as
        (model, request) (its prompt tokens wait again as submitted) or (model, request, prompt tokens) (a
        resumption's: its prompt and the tokens it has out; None: as submitted): they go to the front of their
        queues. Requests that
        cannot start over are the executor's to end (``request_finished`` with their instance)."""
        st = self.state
        lost = set(gpu_ids)
        gone = [i for i, inst in st.instances.items() if lost.intersection(inst.gpus)]
        for iid in gone:
            del st.instances[iid]
        by_model: dict[str, list] = {}
        for model, req, *tokens in requeue:  # back in the queue: their prompt tokens wait again
            by_model.setdefault(model, []).append((req, tokens[0] if tokens else None))
        for model, moved in by_model.items():
            self._requeue(model, moved)
        self._drop_prefill_of(set(gone))
        for pid in [p for p, pw in st.prewarms.items() if lost.intersection(pw.gpus)]:
            del st.prewarms[pid]
        for iid in [i for i, k in self.kept.items() if lost.intersection(k.gpus)]:
            del self.kept[iid]
        for g in lost:
            gpu = st.gpus[g]
            gpu.gone = True
            srv = st.servers[gpu.server_id]
            srv.gpu_ids = tuple(x for x in srv.gpu_ids if x != g)
        if self._applying:
            self._route_due = True  # see apply
        else:
            self.route_all(now_s)

    def live_gpus(self) -> list[int]:
        return [g.gpu_id for g in self.state.gpus if not g.gone]
