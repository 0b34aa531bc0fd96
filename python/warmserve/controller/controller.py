"""The controller: the only writer of cluster state. It keeps the policy's ClusterState in step with what the
workers report, asks the policy where each request goes and what to do each tick, and carries the actions out on
real workers over ZeroMQ.

Every send to a worker happens synchronously, in the order the actions were applied, so one worker sees them in
that order (ZeroMQ keeps per-peer order). The only waits are a start's load and activation, run as tasks.
Live workers are the policy's GPUs, numbered densely in registration order; the numbering is rebuilt when a
worker joins or is lost.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from warmserve import protocol as P
from warmserve.config import ClusterConfig
from warmserve.controller.errors import NoWorkersError, OverloadedError
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.models import ServedModel
from warmserve.controller.requests import Req
from warmserve.controller.workers import WorkerHub, WorkerRecord, host_of
from warmserve.errors import (InvalidArgumentError, TimeoutError_, UnknownModelError, WarmServeError,
                              WorkerLostError)
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.apply import kv_blocks_for
from warmserve.policy.state import ClusterState, GpuState, InstanceState, ModelInfo, PrewarmState, ServerState

log = logging.getLogger("warmserve.controller")

#: Longest a checkpoint load on a worker may take before the start counts as failed, seconds.
LOAD_TIMEOUT_S = 600.0
#: Consecutive failed starts of a model after which its waiting requests fail with the reason.
START_ATTEMPTS = 3
#: Longest a control call (evict, activate, deactivate, KV target, stats) may take, seconds.
CALL_TIMEOUT_S = 60.0


def local_midnight(t: float) -> float:
    """Unix time of the local midnight that starts the day of Unix time t."""
    lt = time.localtime(t)
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))


#: Days before now where the policy's clock starts when no history reaches further back.
CLOCK_DAYS_BACK = 7


def policy_clock_origin(now_unix_s: float, history: dict | None) -> float:
    """The policy's t = 0: a local midnight (so now_s % 86400 is the time of day) at or before every history
    window and a week before now, so every window has a non-negative start."""
    earliest = now_unix_s - CLOCK_DAYS_BACK * 86400
    for starts, _, _ in (history or {}).values():
        if len(starts):
            earliest = min(earliest, float(min(starts)))
    return local_midnight(earliest)


def history_on_clock(history: dict | None, origin_s: float, models) -> dict | None:
    """History windows (Unix-time starts) moved onto the policy's clock; models not served are left out."""
    if not history:
        return None
    import numpy as np

    out = {}
    for m, (starts, avg, peak) in history.items():
        if m not in models:
            log.warning("history names model %r, which this cluster does not serve: ignored", m)
            continue
        out[m] = (np.asarray(starts, float) - origin_s, np.asarray(avg, float), np.asarray(peak, float))
    return out


class _Instance:
    __slots__ = ("iid", "model", "worker", "ready")

    def __init__(self, iid: str, model: str, worker: WorkerRecord):
        self.iid, self.model, self.worker = iid, model, worker
        self.ready = False


class _Prewarm:
    __slots__ = ("pid", "model", "worker", "loaded", "fut")

    def __init__(self, pid: str, model: str, worker: WorkerRecord):
        self.pid, self.model, self.worker = pid, model, worker
        self.loaded = False
        self.fut: asyncio.Future | None = None  # the Prewarm call's final reply


class Controller:
    def __init__(self, config: ClusterConfig, models: list[ServedModel], *, history: dict | None = None,
                 policy_config: PolicyConfig | None = None):
        if not models:
            raise InvalidArgumentError("a cluster needs at least one model")
        for m in models:
            if m.spec.tp != 1:
                raise InvalidArgumentError(
                    f"model {m.name!r}: tp={m.spec.tp}, but live workers hold one device each and tensor-parallel "
                    f"instances are not supported yet: use tp=1", tp=m.spec.tp)
        self.config = config
        self.cc = config.controller
        self.models: dict[str, ServedModel] = {m.name: m for m in models}
        infos = [ModelInfo(m.name, weight_bytes=m.weight_bytes, tp=1, kv_bytes_per_token=m.kv_bytes_per_token)
                 for m in models]
        if policy_config is None:
            options = dict(self.cc.policy_options)
            try:
                policy_config = PolicyConfig(**{"window_s": self.cc.window_s, **options})
            except TypeError as e:
                import dataclasses

                known = sorted(f.name for f in dataclasses.fields(PolicyConfig))
                raise InvalidArgumentError(f"policy options {sorted(options)}: {e}; known: {known}") from None
        self.policy_config = policy_config
        now_unix = time.time()
        self._t0_mono = time.monotonic()
        #: Unix time of the policy clock's t = 0; now_s() counts from it.
        self.clock_origin_s = policy_clock_origin(now_unix, history)
        self._t0_s = now_unix - self.clock_origin_s
        self.policy = make_policy(self.cc.policy, models=infos, config=self.policy_config,
                                  history=history_on_clock(history, self.clock_origin_s, self.models))
        self.state = ClusterState(servers=[], gpus=[], models={i.name: i for i in infos})
        self.state.queued = {m: 0 for m in self.models}
        self.metrics = ControllerMetrics()
        self.metrics.registry.collectors.append(self._collect)
        self.pending: dict[str, collections.deque[Req]] = {m: collections.deque() for m in self.models}
        self.instances: dict[str, _Instance] = {}
        self.prewarms: dict[str, _Prewarm] = {}
        #: Weights of stopped instances still resident on their worker (Deactivate keeps them), by (model, worker
        #: id): a Prewarm of that model there takes them with no copy; the end of the next tick evicts the rest.
        self._kept: dict[tuple[str, str], WorkerRecord] = {}
        self.gpu_workers: list[WorkerRecord] = []
        self.hub: WorkerHub | None = None
        self.closing = False
        self._tasks: list[asyncio.Task] = []
        self._bg: set[asyncio.Task] = set()
        self._next_rid = 0
        self.worker_event: asyncio.Event | None = None
        #: Ticks start once the expected workers are in (wait_for_workers).
        self.policy_running = False
        #: Model -> monotonic time before which no new start is tried (after a failed one), and failure counts.
        self._start_backoff: dict[str, float] = {}
        self._start_failures: dict[str, int] = {}
        #: Routing id -> process, for the workers this controller spawned (their exit is noticed at once).
        self.local_procs: dict = {}

    # ------------------------------------------------------------------------------------------- life cycle

    def now_s(self) -> float:
        return self._t0_s + (time.monotonic() - self._t0_mono)

    async def start(self) -> str:
        """Bind the workers' socket and start the loops; returns the endpoint workers connect to."""
        self.worker_event = asyncio.Event()
        self.hub = WorkerHub(self.cc.bind, on_hello=self._on_hello, on_event=self._on_event, on_lost=self._on_lost,
                             curve_dir=self.cc.curve_dir)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.hub.recv_loop()), loop.create_task(self._heartbeat_loop()),
                       loop.create_task(self._policy_loop())]
        return self.hub.endpoint

    async def wait_for_workers(self, n: int, timeout_s: float, procs=()) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(w.ready for w in self.hub.workers.values()) < n:
            for p in procs:
                if p.poll() is not None:
                    raise WorkerLostError(
                        f"a local worker exited with status {p.returncode} before it registered; see its log",
                        status=p.returncode)
            left = deadline - time.monotonic()
            if left <= 0:
                have = sum(w.ready for w in self.hub.workers.values())
                raise TimeoutError_(
                    f"{have} of {n} workers registered within {timeout_s:.0f} s: check that they can reach "
                    f"{self.hub.endpoint} (for remote ones, bind the controller to a reachable address)",
                    timeout_s=timeout_s, ready=have, expected=n)
            self.worker_event.clear()
            try:
                await asyncio.wait_for(self.worker_event.wait(), min(left, 0.2))
            except asyncio.TimeoutError:
                pass
        # The policy's first tick sees the whole initial cluster: static layouts (dedicated, shared) place once.
        self.policy_running = True

    async def close(self, drain: bool = True) -> None:
        """Refuse new requests, let in-flight ones finish (up to drain_timeout_s), then stop the workers."""
        if self.closing:
            return
        self.closing = True
        if drain:
            deadline = time.monotonic() + self.cc.drain_timeout_s
            while self._open_requests() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for reqs in self.pending.values():
            while reqs:
                reqs.popleft().fail(OverloadedError("the server is shutting down; the request was not started"))
        for w in list(self.hub.workers.values()):
            for gid, req in list(w.gens.items()):
                req.fail(OverloadedError("the server shut down before the request finished"))
                if w.alive and w.proc is None:  # a remote worker stays up: free the request's KV blocks now
                    self._fire(w, P.Abort(id=self.hub.next_id(), request_id=gid))
        # Local workers get Shutdown and a moment to free their pools; remote ones stay up for the next controller.
        waits = []
        for w in self.hub.workers.values():
            if w.alive and w.proc is not None:
                waits.append(self.hub.start_call(w, P.Shutdown(id=self.hub.next_id())))
        if waits:
            await asyncio.wait(waits, timeout=5.0)
        for t in self._tasks + list(self._bg):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._bg, return_exceptions=True)
        for w in self.hub.workers.values():
            if w.proc is not None:
                await asyncio.to_thread(_reap, w.proc)
        self.hub.close()

    def _open_requests(self) -> int:
        return sum(len(q) for q in self.pending.values()) + sum(
            len(w.gens) for w in self.hub.workers.values() if w.alive)

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)
        return t

    # ------------------------------------------------------------------------------------------- requests

    def model(self, name: str) -> ServedModel:
        m = self.models.get(name)
        if m is None:
            raise UnknownModelError(
                f"the model {name!r} does not exist on this server; it serves {sorted(self.models)}",
                param="model", model=name)
        return m

    def model_names(self) -> list[str]:
        return list(self.models)

    async def submit(self, model: str, prompt_ids: list[int], sampling) -> Req:
        return self.submit_nowait(model, prompt_ids, sampling)

    def submit_nowait(self, model: str, prompt_ids: list[int], sampling) -> Req:
        """Queue a request and route it at once when an instance has room. Returns the request to iterate."""
        self.model(model)
        if self.closing:
            raise OverloadedError("the server is shutting down and takes no new requests")
        if not any(w.ready for w in self.gpu_workers):
            raise NoWorkersError(
                "no live worker can serve requests right now; the controller waits for workers to (re)join",
                workers=len(self.gpu_workers))
        q = self.pending[model]
        if len(q) >= self.cc.max_queue:
            raise OverloadedError(
                f"{len(q)} requests for {model!r} are already waiting for an instance (limit {self.cc.max_queue}): "
                f"retry later, add workers, or raise controller.max_queue", queued=len(q), limit=self.cc.max_queue)
        self._next_rid += 1
        req = Req(self._next_rid, model, prompt_ids, sampling, self.cc.request_timeout_s)
        req._abort_cb = self._abort
        q.append(req)
        self.state.queued[model] += 1
        self.metrics.prompt_tokens.inc(len(prompt_ids), model=model)
        on_start = getattr(self.policy, "on_request_start", None)
        if on_start is not None:
            on_start(model, self.now_s())
        self._dispatch(model)
        return req

    def _dispatch(self, model: str) -> None:
        """Route the model's queued requests, oldest first, until the policy says wait."""
        q = self.pending[model]
        while q:  # also while draining: requests already accepted are served
            req = q[0]
            if self._start_backoff.get(model, 0.0) > time.monotonic() and not any(
                    i.ready for i in self.instances.values() if i.model == model):
                return  # the last start of this model failed: let the next tick retry, not every arrival
            act = self.policy.route(self.state, model, self.now_s(), req.rid)
            if isinstance(act, A.Route):
                q.popleft()
                self.state.queued[model] -= 1
                self._send_generate(req, act.instance_id)
            elif isinstance(act, A.StartInstance):
                self._apply(act)
                return
            else:
                return

    def _send_generate(self, req: Req, iid: str) -> None:
        inst = self.instances[iid]
        w = inst.worker
        gid = self.hub.next_id()
        s = req.sampling
        msg = P.Generate(id=gid, model=req.model, prompt_ids=req.prompt_ids, sampling=P.Sampling(
            max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed))
        req.worker, req.instance_id, req.gid = w, iid, gid
        req.sent_s = time.monotonic()
        w.gens[gid] = req
        self.state.instances[iid].in_flight += 1
        try:
            self.hub.send(w, msg)
        except WorkerLostError:
            pass  # _on_lost already re-queued it

    def _abort(self, req: Req) -> None:
        if req.worker is None:
            q = self.pending[req.model]
            try:
                q.remove(req)
            except ValueError:
                return
            self.state.queued[req.model] -= 1
            self._request_done(req, "abort")
            return
        w = req.worker
        if w.alive and w.gens.get(req.gid) is req:
            self._fire(w, P.Abort(id=self.hub.next_id(), request_id=req.gid))

    def _on_event(self, w: WorkerRecord, msg) -> None:
        if isinstance(msg, P.Tokens):
            req = w.gens.get(msg.id)
            if req is None:
                return
            req.push(msg.token_ids)
            if msg.finished:
                req.end_s = time.monotonic()
                self._end_gen(w, msg.id)
                req.finish(msg.finish_reason or "stop")
                self._request_done(req, msg.finish_reason or "stop")
        elif isinstance(msg, P.Error):
            req = w.gens.get(msg.id)
            if req is None:
                log.warning("%r: error for unknown request %d: %s", w, msg.id, msg.message)
                return
            self._end_gen(w, msg.id)
            req.fail(msg.exception())
            self._request_done(req, "error")

    def _end_gen(self, w: WorkerRecord, gid: int) -> None:
        req = w.gens.pop(gid)
        st = self.state.instances.get(req.instance_id)
        if st is not None:
            st.in_flight -= 1
            if st.draining and st.in_flight <= 0:
                self._finish_stop(req.instance_id)
        self._dispatch(req.model)

    def _request_done(self, req: Req, outcome: str) -> None:
        m = req.model
        on_done = getattr(self.policy, "on_request_done", None)
        if on_done is not None:
            on_done(m, self.now_s())
        self.metrics.requests.inc(model=m, outcome=outcome)
        if req.first_token_s is not None:
            self.metrics.ttft.observe(req.first_token_s - req.arrival_s, model=m)
            self.metrics.e2e.observe(req.last_token_s - req.arrival_s, model=m)
            self.metrics.tokens.inc(req.generated, model=m)
            if req.generated > 1:
                self.metrics.tpot.observe((req.last_token_s - req.first_token_s) / (req.generated - 1), model=m)

    # ------------------------------------------------------------------------------------------- actions

    def _apply(self, act) -> None:
        """Apply one policy action to the state at once and start it on the workers."""
        now = self.now_s()
        if isinstance(act, A.Route):
            return  # routes come from route() and are handled in _dispatch
        if isinstance(act, A.Prewarm):
            w = self._gpu(act.gpus)
            kept = self._kept.pop((act.model, w.worker_id), None) is w
            self.state.prewarms[act.prewarm_id] = PrewarmState(act.prewarm_id, act.model, act.gpus,
                                                               1.0 if kept else 0.0, act.score)
            pw = self.prewarms[act.prewarm_id] = _Prewarm(act.prewarm_id, act.model, w)
            if kept:  # a stopped instance's weights, still on the worker: nothing to copy
                pw.loaded = True
            else:
                self._evict_kept(w)
                self._start_load(pw)
        elif isinstance(act, (A.Evict, A.CancelPrewarm)):
            self._drop_prewarm(act.prewarm_id)
        elif isinstance(act, A.StartInstance):
            if self._start_backoff.get(act.model, 0.0) > time.monotonic():
                return  # its last start failed moments ago; the policy asks again on a later tick
            w = self._gpu(act.gpus)
            self._evict_kept(w)  # the policy counts that memory as free
            for pid in act.evict:
                self._drop_prewarm(pid)
            pw = self.prewarms.pop(act.prewarm_id, None) if act.prewarm_id else None
            if act.prewarm_id:
                self.state.prewarms.pop(act.prewarm_id, None)
            self.state.instances[act.instance_id] = InstanceState(act.instance_id, act.model, act.gpus, created_s=now)
            inst = self.instances[act.instance_id] = _Instance(act.instance_id, act.model, w)
            (self.metrics.prewarm_hits if pw is not None else self.metrics.prewarm_misses).inc(model=act.model)
            self._spawn(self._start_instance(inst, pw, act))
        elif isinstance(act, A.StopInstance):
            st = self.state.instances.get(act.instance_id)
            if st is None:
                return
            st.draining = True
            if st.in_flight <= 0:
                self._finish_stop(act.instance_id)
        elif isinstance(act, A.SetKvTarget):
            st = self.state.instances.get(act.instance_id)
            inst = self.instances.get(act.instance_id)
            if st is None or inst is None or not inst.ready:
                return
            st.kv_free_target = act.free_blocks
            st.kv_blocks_mapped = min(st.kv_blocks_total, st.kv_blocks_used + act.free_blocks)
            self._fire(inst.worker, P.SetKvTarget(id=self.hub.next_id(), model=inst.model, free_blocks=act.free_blocks),
                       on_reply=lambda r, st=st: _apply_kv(st, r.kv))
        else:
            log.warning("unknown policy action %r ignored", act)

    def _gpu(self, gpus: tuple[int, ...]) -> WorkerRecord:
        if len(gpus) != 1:
            raise InvalidArgumentError(f"the live controller runs tp=1 only; the policy asked for GPUs {gpus}")
        return self.gpu_workers[gpus[0]]

    def _start_load(self, pw: _Prewarm) -> None:
        m = self.models[pw.model]
        st = self.state.prewarms[pw.pid]

        def progress(msg: P.PrewarmProgress):
            if msg.total_bytes:
                st.progress = min(0.999, msg.loaded_bytes / msg.total_bytes)

        msg = P.Prewarm(id=self.hub.next_id(), path=m.spec.path, name=m.name, dtype=m.spec.dtype)
        pw.fut = self.hub.start_call(pw.worker, msg, on_progress=progress)

        def done(fut: asyncio.Future, pw=pw):
            exc = fut.exception() if not fut.cancelled() else None
            reply = None if exc is not None or fut.cancelled() else fut.result()
            if isinstance(reply, P.Error):
                exc = reply.exception()
            if exc is None:
                pw.loaded = True
                s = self.state.prewarms.get(pw.pid)
                if s is not None:
                    s.progress = 1.0
            elif pw.pid in self.state.prewarms and pw.worker.alive:
                log.warning("prewarm %s of %s on %r failed: %s", pw.pid, pw.model, pw.worker, exc)
                self.state.prewarms.pop(pw.pid, None)
                self.prewarms.pop(pw.pid, None)

        pw.fut.add_done_callback(done)

    def _drop_prewarm(self, pid: str) -> None:
        self.state.prewarms.pop(pid, None)
        pw = self.prewarms.pop(pid, None)
        if pw is not None and pw.worker.alive:
            self._fire(pw.worker, P.Evict(id=self.hub.next_id(), name=pw.model))

    async def _start_instance(self, inst: _Instance, pw: _Prewarm | None, act: A.StartInstance) -> None:
        w = inst.worker
        loaded = False
        try:
            if pw is None:
                pw = _Prewarm(act.instance_id, act.model, w)
                m = self.models[act.model]
                pw.fut = self.hub.start_call(w, P.Prewarm(id=self.hub.next_id(), path=m.spec.path, name=m.name,
                                                          dtype=m.spec.dtype))
            if not pw.loaded:
                reply = await asyncio.wait_for(asyncio.shield(pw.fut), LOAD_TIMEOUT_S)
                if isinstance(reply, P.Error):
                    raise reply.exception()
            loaded = True
            kv_blocks, shared = None, act.kv_fraction < 1.0
            if shared:
                kv_blocks = max(1, kv_blocks_for(self.state, act.model, act.gpus, act.kv_fraction))
            reply = await self.hub.call(w, P.Activate(id=self.hub.next_id(), name=act.model, kv_blocks=kv_blocks,
                                                      shared=shared), CALL_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._instance_failed(inst, e, loaded)
            return
        st = self.state.instances.get(inst.iid)
        if st is None:  # lost or stopped while starting
            return
        inst.ready = True
        self._start_failures.pop(inst.model, None)
        st.ready_s = self.now_s()
        st.kv_blocks_total = st.kv_blocks_mapped = int(reply.kv_blocks)
        log.info("instance %s of %s ready on %r (%s)", inst.iid, inst.model, w,
                 "prewarm hit" if act.prewarm_id else "cold load")
        self._dispatch(inst.model)

    def _instance_failed(self, inst: _Instance, e: BaseException, loaded: bool) -> None:
        log.warning("instance %s of %s on %r failed to start: %s", inst.iid, inst.model, inst.worker, e)
        self.state.instances.pop(inst.iid, None)
        self.instances.pop(inst.iid, None)
        if loaded and inst.worker.alive:
            # The weights got loaded: drop them, so the worker's memory matches the state again.
            self._fire(inst.worker, P.Evict(id=self.hub.next_id(), name=inst.model))
        if isinstance(e, WorkerLostError):
            return  # the worker's loss re-routes its requests
        n = self._start_failures[inst.model] = self._start_failures.get(inst.model, 0) + 1
        self._start_backoff[inst.model] = time.monotonic() + min(5.0, 0.25 * 2 ** n)
        if n >= START_ATTEMPTS and not any(i.ready for i in self.instances.values() if i.model == inst.model):
            # Starting keeps failing: tell the waiting clients why instead of letting them time out.
            q = self.pending[inst.model]
            while q:
                req = q.popleft()
                self.state.queued[inst.model] -= 1
                err = WarmServeError(f"could not start an instance of {inst.model!r} ({n} attempts): {e}",
                                     attempts=n)
                err.http_status = getattr(e, "http_status", 500) if getattr(e, "http_status", 500) >= 500 else 503
                req.fail(err)
                self._request_done(req, "error")

    def _finish_stop(self, iid: str) -> None:
        self.state.instances.pop(iid, None)
        inst = self.instances.pop(iid, None)
        if inst is None or not inst.worker.alive:
            return
        # Deactivate keeps the weights resident: the policy may keep them as a prewarm (a Prewarm of this model on
        # this worker later in this tick or in the next one); otherwise _evict_kept drops them.
        self._fire(inst.worker, P.Deactivate(id=self.hub.next_id(), name=inst.model))
        self._kept[(inst.model, inst.worker.worker_id)] = inst.worker

    def _evict_kept(self, w: WorkerRecord | None = None) -> None:
        """Evict the kept weights no Prewarm took (on worker ``w``, or everywhere): the policy only counts
        prewarms it asked for."""
        for key in [k for k, kw in self._kept.items() if w is None or kw is w]:
            kw = self._kept.pop(key)
            if kw.alive:
                self._fire(kw, P.Evict(id=self.hub.next_id(), name=key[0]))

    def _fire(self, w: WorkerRecord, msg, on_reply=None) -> None:
        """Send a control request whose answer only matters if it is an error (logged) or carries state."""
        fut = self.hub.start_call(w, msg)

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
            elif on_reply is not None:
                on_reply(reply)

        fut.add_done_callback(done)

    # ------------------------------------------------------------------------------------------- workers

    def _on_hello(self, ident: bytes, hello: P.Hello) -> None:
        w = WorkerRecord(worker_id=hello.worker_id, ident=ident, device=hello.device, pid=hello.pid,
                         capacity_bytes=hello.capacity_bytes, page_bytes=hello.page_bytes,
                         host=host_of(hello.worker_id))
        w.proc = self.local_procs.get(ident)
        self.hub.workers[ident] = w
        log.info("%r joined (%.1f GiB)", w, hello.capacity_bytes / (1 << 30))
        self._spawn(self._admit(w))

    async def _admit(self, w: WorkerRecord) -> None:
        """Answer the Hello, clear whatever a previous controller left on the worker, then hand it to the policy."""
        try:
            self.hub.send(w, P.Heartbeat(time_s=time.time()))
            stats = await self.hub.call(w, P.GetStats(id=self.hub.next_id()), CALL_TIMEOUT_S)
            for inst in stats.instances:
                await self.hub.call(w, P.Deactivate(id=self.hub.next_id(), name=inst.name), CALL_TIMEOUT_S)
            for m in stats.models:
                await self.hub.call(w, P.Evict(id=self.hub.next_id(), name=m.name), LOAD_TIMEOUT_S)
        except WarmServeError as e:
            self.hub.lose(w, f"could not be admitted: {e}")
            return
        w.ready = True
        self.gpu_workers.append(w)
        self._rebuild_gpus()
        self.worker_event.set()
        for m in self.models:
            self._dispatch(m)

    def _on_lost(self, w: WorkerRecord, why: str) -> None:
        self.metrics.workers_lost.inc()
        for iid in [i for i, inst in self.instances.items() if inst.worker is w]:
            self.instances.pop(iid)
            self.state.instances.pop(iid, None)
        for pid in [p for p, pw in self.prewarms.items() if pw.worker is w]:
            self.prewarms.pop(pid)
            self.state.prewarms.pop(pid, None)
        for key in [k for k, kw in self._kept.items() if kw is w]:
            del self._kept[key]
        requeue = []
        for gid, req in list(w.gens.items()):
            if req.generated == 0 and not req.done:
                requeue.append(req)
            else:
                req.fail(WorkerLostError(
                    f"{w!r} was lost ({why}) after this request had streamed {req.generated} tokens; it cannot be "
                    f"resumed elsewhere: retry the request", worker_id=w.worker_id, generated_tokens=req.generated))
                self._request_done(req, "worker_lost")
        w.gens.clear()
        # Re-routed requests go to the front of their queue: they are the oldest.
        for req in reversed(requeue):
            req.worker = req.instance_id = None
            req.reroutes += 1
            self.pending[req.model].appendleft(req)
            self.state.queued[req.model] += 1
            self.metrics.rerouted.inc(model=req.model)
        if w in self.gpu_workers:
            self.gpu_workers.remove(w)
            self._rebuild_gpus()
        if not any(x.ready for x in self.gpu_workers):
            # Nothing left to serve them: say so now rather than at the request timeout.
            for model, q in self.pending.items():
                while q:
                    req = q.popleft()
                    self.state.queued[model] -= 1
                    req.fail(NoWorkersError(f"every worker is lost (the last: {w!r}, {why}); retry when workers rejoin",
                                            worker_id=w.worker_id))
                    self._request_done(req, "worker_lost")
            return
        for m in self.models:
            self._dispatch(m)

    def _rebuild_gpus(self) -> None:
        """Dense GPU ids over the live workers, grouped into servers by host."""
        hosts: dict[str, list[int]] = {}
        gpus = []
        for i, w in enumerate(self.gpu_workers):
            hosts.setdefault(w.host, []).append(i)
            gpus.append(GpuState(i, 0, w.capacity_bytes))
        servers = []
        for s, ids in enumerate(hosts.values()):
            servers.append(ServerState(s, tuple(ids)))
            for g in ids:
                gpus[g].server_id = s
        index = {id(w): i for i, w in enumerate(self.gpu_workers)}
        self.state.servers, self.state.gpus = servers, gpus
        for iid, inst in self.instances.items():
            self.state.instances[iid].gpus = (index[id(inst.worker)],)
        for pid, pw in self.prewarms.items():
            self.state.prewarms[pid].gpus = (index[id(pw.worker)],)

    # ------------------------------------------------------------------------------------------- loops

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cc.heartbeat_interval_s)
            # Workers push their Stats (pages, KV blocks) with every heartbeat of theirs; nothing to poll.
            self.hub.beat(time.monotonic(), self.cc.worker_timeout_s)

    async def _policy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cc.tick_s)
            if not self.gpu_workers or not self.policy_running:
                continue
            try:
                self._tick()
            except Exception:  # a policy bug must not stop serving; it is logged with its trace
                log.exception("policy tick failed")

    def _tick(self) -> None:
        self._sync_kv()
        for act in self.policy.tick(self.state, self.now_s()):
            self._apply(act)
        self._evict_kept()
        for m in self.models:
            self._dispatch(m)
        self._expire()

    def _sync_kv(self) -> None:
        """KV block counts of running instances from the workers' latest stats."""
        for iid, inst in self.instances.items():
            st = self.state.instances.get(iid)
            stats = inst.worker.stats
            if st is None or not inst.ready or stats is None:
                continue
            for i in stats.instances:
                if i.name == inst.model:
                    _apply_kv(st, i.kv)

    def _expire(self) -> None:
        now = time.monotonic()
        for model, q in self.pending.items():
            while q and q[0].deadline_s < now:
                req = q.popleft()
                self.state.queued[model] -= 1
                req.fail(TimeoutError_(
                    f"no instance of {model!r} could take the request within {self.cc.request_timeout_s:.0f} s; "
                    f"retry later or add workers", timeout_s=self.cc.request_timeout_s))
                self._request_done(req, "timeout")
        for w in self.gpu_workers:
            for gid, req in list(w.gens.items()):
                last = req.last_token_s or req.arrival_s
                if not req.done and now - last > self.cc.request_timeout_s:
                    req.fail(TimeoutError_(
                        f"{w!r} produced no token for {self.cc.request_timeout_s:.0f} s", timeout_s=self.cc.request_timeout_s))
                    self._fire(w, P.Abort(id=self.hub.next_id(), request_id=gid))

    # ------------------------------------------------------------------------------------------- views

    def health(self) -> dict:
        live = [w for w in self.gpu_workers if w.ready]
        return {"ok": bool(live) and not self.closing, "workers": len(live),
                "instances": sum(1 for i in self.instances.values() if i.ready),
                "closing": self.closing}

    def stats(self) -> dict:
        """A plain-dict snapshot: workers, instances, prewarms, queues (what `Cluster.stats()` returns)."""
        workers = []
        for w in self.hub.workers.values():
            s = w.stats
            workers.append({
                "worker_id": w.worker_id, "device": w.device, "alive": w.alive, "ready": w.ready,
                "capacity_bytes": w.capacity_bytes, "in_flight": len(w.gens),
                "pool": dict(s.pool) if s is not None else {},
                "models": {m.name: m.state for m in s.models} if s is not None else {},
            })
        return {
            "workers": workers,
            "instances": [{"instance_id": i, "model": st.model, "worker": self.instances[i].worker.worker_id,
                           "ready": st.ready, "in_flight": st.in_flight, "draining": st.draining,
                           "kv_blocks_total": st.kv_blocks_total, "kv_blocks_mapped": st.kv_blocks_mapped}
                          for i, st in self.state.instances.items() if i in self.instances],
            "prewarms": [{"prewarm_id": p, "model": st.model, "worker": self.prewarms[p].worker.worker_id,
                          "progress": st.progress} for p, st in self.state.prewarms.items() if p in self.prewarms],
            "queued": dict(self.state.queued),
            "prewarm_hits": {m: self.metrics.prewarm_hits.get(model=m) for m in self.models},
            "prewarm_misses": {m: self.metrics.prewarm_misses.get(model=m) for m in self.models},
        }

    def _collect(self) -> None:
        m = self.metrics
        for g in (m.queue, m.inflight, m.instances, m.prewarmed, m.workers, m.pages):
            g.clear()
        for name in self.models:
            m.queue.set(len(self.pending[name]), model=name)
            m.instances.set(sum(1 for i in self.instances.values() if i.model == name and i.ready), model=name)
            m.inflight.set(sum(st.in_flight for st in self.state.instances.values() if st.model == name), model=name)
            m.prewarmed.set(sum(1 for p in self.prewarms.values() if p.model == name and p.loaded), model=name)
        ws = list(self.hub.workers.values()) if self.hub else []
        m.workers.set(sum(w.ready for w in ws), state="ready")
        m.workers.set(sum(not w.alive for w in ws), state="lost")
        for w in ws:
            if w.alive and w.stats is not None:
                for role, pages in pages_by_role(w.stats, self.models).items():
                    m.pages.set(pages, worker=w.worker_id, role=role)


def _apply_kv(st: InstanceState, kv: dict) -> None:
    total = _first(kv, "total_blocks", "num_blocks", "blocks_total")
    used = _first(kv, "used_blocks", "blocks_used")
    mapped = _first(kv, "mapped_blocks", "blocks_mapped")
    if total is not None:
        st.kv_blocks_total = int(total)
    if used is not None:
        st.kv_blocks_used = int(used)
    if mapped is not None:
        st.kv_blocks_mapped = int(mapped)


def _first(d: dict, *keys):
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def kv_pages(kv: dict, kv_bytes_per_token: int, page_bytes: int) -> int:
    """Pages an instance's mapped KV blocks hold (a block covers block_tokens tokens over all layers)."""
    per_block = -(-int(kv.get("block_tokens", 256)) * kv_bytes_per_token // page_bytes)
    return int(kv.get("mapped_blocks", 0)) * per_block


def pages_by_role(stats: P.Stats, models: dict) -> dict[str, int]:
    """Pages of a worker's pool by role: free, weights of running instances, prewarmed weights, mapped KV cache,
    and "unaccounted": in use by none of those (a leak, if it stays above 0 while the worker is idle)."""
    page = int(stats.pool.get("page_bytes", 2 << 20)) or (2 << 20)
    total = int(stats.pool.get("total_bytes", 0)) // page
    out = {"free": int(stats.pool.get("free_bytes", 0)) // page}
    running = {i.name for i in stats.instances}
    out["weights"] = sum(m.pages for m in stats.models if m.name in running)
    out["prewarmed"] = sum(m.pages for m in stats.models if m.name not in running)
    out["kv"] = sum(kv_pages(i.kv, models[i.name].kv_bytes_per_token if i.name in models else 0, page)
                    for i in stats.instances)
    out["unaccounted"] = max(0, total - sum(out.values()))
    return out


def _reap(proc) -> None:
    try:
        proc.wait(timeout=5.0)
    except Exception:  # still running after Shutdown: stop it
        proc.terminate()
        try:
            proc.wait(timeout=5.0)
        except Exception:
            proc.kill()
            proc.wait()
