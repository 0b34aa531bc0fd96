"""The controller: the only writer of cluster state. It runs the policy driver (``warmserve.policy.driver``) with
the live executor (``controller.executor``): requests are queued and routed by the driver, the driver's actions
become worker messages, and what the workers report goes back to the driver. This module holds the life cycle, the
loops, worker membership and request submission; ``controller.restarts`` the restarts of lost local workers and the
planned replacements of their processes; ``controller.views`` the health, stats and metrics views;
``controller.clock`` the policy's clock; ``controller.history_record`` the measured load kept in a file. Each worker
is one policy GPU, its id kept for the controller's life: a lost worker's GPU is marked gone (never renumbered), and
a worker that joins later gets a new id.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time

from warmserve import protocol as P
from warmserve.config import ClusterConfig, with_worker_page_bytes
from warmserve.controller import clock, draining, history_record, losses, observed, refusals, views
from warmserve.controller.clock import history_in_reach, history_on_clock, policy_calendar, policy_clock_origin
from warmserve.controller.errors import NoWorkersError, OverloadedError
from warmserve.controller.executor import CALL_TIMEOUT_S, LOAD_TIMEOUT_S, LiveExecutor, fire
from warmserve.controller.groups import GroupManager
from warmserve.controller.layout_log import LayoutLog
from warmserve.controller.loop_stall import LoopStalls
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.models import ControllerModel
from warmserve.controller.requests import Req
from warmserve.controller.restarts import WorkerRestarts, exit_words, log_tail, reap, reap_now
from warmserve.controller.workers import WorkerHub, WorkerRecord, check_answer_fits, server_of
from warmserve.errors import (InvalidArgumentError, NoRoomHereError, TimeoutError_, UnknownModelError, WarmServeError,
                              WorkerLostError, cut_name, served_models_words)
from warmserve.log_repeats import RepeatedFailure
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.colocation import UnplacedModelError
from warmserve.policy.driver import PolicyDriver
from warmserve.policy.state import ClusterState, ModelInfo

log = logging.getLogger("warmserve.controller")


#: Planned engine restarts listed in /stats (the latest; the histogram counts them all).
ENGINE_STARTS_KEPT = 200
#: Seconds a local worker's first process found exited with no Hello seen has for its Hello to be read, or it fails.
EXIT_GRACE_S = 0.5


def check_tp_fits(models, widest: int) -> None:
    """Raises InvalidArgumentError for the first of ``models`` (``ControllerModel``) whose tp needs more workers on
    one machine than ``widest``, the most any machine has."""
    for m in models:
        if m.spec.tp > widest:
            raise InvalidArgumentError(
                f"model {m.name!r} needs tp={m.spec.tp} workers on one machine, but the widest machine has "
                f"{widest}: start more workers per machine (cpu_workers, or one per GPU) or lower its tp",
                model=m.name, tp=m.spec.tp, workers_per_machine=widest)


class Controller(WorkerRestarts):
    def __init__(self, config: ClusterConfig, models: list[ControllerModel], *, history: dict | None = None,
                 policy_config: PolicyConfig | None = None):
        if not models:
            raise InvalidArgumentError("a cluster needs at least one model")
        self.config = config = with_worker_page_bytes(config, ())  # 0 unresolved by a launcher: the 2 MiB unit
        self.cc = config.controller
        self.models: dict[str, ControllerModel] = {m.name: m for m in models}
        infos = [ModelInfo(m.name, weight_bytes=m.weight_bytes, tp=m.spec.tp, kv_bytes_per_token=m.kv_bytes_per_token,
                           page_bytes=config.worker_page_bytes, max_context_tokens=m.max_context) for m in models]
        pcfg = policy_config or self.cc.policy_config
        wide = sorted(m.name for m in models if m.spec.tp > 1)
        if pcfg.colocate_tp and wide:
            # the workers run a tensor-parallel shard alone (worker.tp refuses a shared activation): a layout that
            # put one beside another model would fail at each of its activations
            pcfg = dataclasses.replace(pcfg, colocate_tp=False)
            log.info("colocate_tp off: the tensor-parallel models %s each run alone on their workers", wide)
        self.policy_config = pcfg
        self.engine_config = config.engine.resolved(pcfg.instance_capacity)  # what every Activate carries
        now_unix = time.time()
        self._t0_clock_s = clock.policy_clock_s()
        #: Unix time of the policy clock's t = 0 (a midnight of the zone the load follows); now_s() counts from it.
        used = history_in_reach(history, self.models, now_unix, pcfg.window_s)  # the record keeps all of history
        self.clock_origin_s = policy_clock_origin(now_unix, used, self.cc.load_timezone)
        self._t0_s = now_unix - self.clock_origin_s
        self.policy = make_policy(self.cc.policy, models=infos, config=self.policy_config, history=history_on_clock(
            used, self.clock_origin_s, self.models, pcfg.window_s), calendar=policy_calendar(
            self.clock_origin_s, self.cc.load_timezone))
        self.history_record = history_record.attach(self, history)  # --record-history: the windows it measures
        # Statistical forecasters fit in a background process: one fit can take seconds, and ticks run on this loop.
        self.policy.fit_in_background()  # after attach, which may refuse the record file: no process left then
        self.observed = observed.ObservedSteps()  # the engines' measured decode steps, fed to co-serving each tick
        self._layout_log = LayoutLog()  # says when the first tick's colocation holds the scaling rules off
        self.metrics = ControllerMetrics()
        self.metrics.registry.collectors.append(lambda: views.collect(self))
        self.executor = LiveExecutor(self)
        #: Process groups of tensor-parallel instances, built ahead on aligned GPU blocks (controller/groups.py).
        self.groups = GroupManager(self)
        self.driver = PolicyDriver(self.policy, ClusterState(servers=[], gpus=[], models={i.name: i for i in infos}),
                                   self.executor)
        #: The driver's state (instances, prewarms, queues, GPUs), read by the views.
        self.state = self.driver.state
        #: The executor's records of instances and prewarms on their workers, by id.
        self.instances = self.executor.instances
        self.prewarms = self.executor.prewarms
        #: Admitted workers that are alive, in admission order; ``by_gpu``: the same by policy GPU id.
        self.gpu_workers: list[WorkerRecord] = []
        self.by_gpu: dict[int, WorkerRecord] = {}
        self.hub: WorkerHub | None = None
        self.closing = False
        self._drain_until_s = float("inf")  # a close drains until then; end_drain's 0 stays (review: overwritten)
        self._tasks: list[asyncio.Task] = []
        self._loops: list[asyncio.Task] = []
        self._bg: set[asyncio.Task] = set()
        self._next_rid = 0
        self.worker_event: asyncio.Event | None = None
        #: Ticks start once the expected workers are in (wait_for_workers).
        self.policy_running = False
        self._failures = {k: RepeatedFailure(log, k) for k in ("heartbeat", "policy tick", "expiring requests")}
        #: Routing id -> process, for the workers this controller spawned (their exit is noticed at once).
        self.local_procs: dict = {}
        #: Routing id -> a no-argument callable that starts that local worker's process again (set by launch).
        self.local_spawn: dict = {}
        #: Routing ids of local workers being restarted (from their loss until the new process is admitted), each
        #: with the future ``_admit`` resolves with the admitted record; and their restarts in a row, with the last's.
        self.restarting: dict[bytes, asyncio.Future] = {}
        #: Of those, the ones whose worker left by plan (SIGTERM) and whose first restart is under way: not lost.
        self.restarting_by_plan: set[bytes] = set()
        #: Routing id -> (worker id, server, device) of each worker lost and not admitted again since (a local one
        #: is restarted under its routing id; a remote one comes back when a worker with its id, or with its server
        #: and device, joins): the lost workers gauge.
        self.lost_workers: dict[bytes, tuple[str, str, str]] = {}
        self._restarts: dict[bytes, tuple[int, asyncio.Future]] = {}
        #: Routing id -> (the record being replaced, the future of its successor's record), for local workers whose
        #: process is being replaced on purpose (``replace_worker``).
        self.replacing: dict[bytes, tuple[WorkerRecord, asyncio.Future]] = {}
        #: The latest planned engine restarts (``replace_worker``), oldest first: gpu_id, model, pids, stop_s and
        #: start_s (seconds: the old process's exit; the new one's spawn until it was admitted).
        self.engine_starts: collections.deque = collections.deque(maxlen=ENGINE_STARTS_KEPT)
        #: Streams seen skipping Tokens (``_on_event``), each the loss of its worker (also in workers_lost).
        self.stream_gaps = 0

    # ------------------------------------------------------------------------------------------- life cycle

    def now_s(self) -> float:
        return self._t0_s + (clock.policy_clock_s() - self._t0_clock_s)

    async def start(self) -> str:
        """Bind the workers' socket and start the loops; returns the endpoint workers connect to."""
        self.worker_event = asyncio.Event()
        # Not a local worker being restarted or replaced: its process is being stopped, and its successor says Hello.
        self.hub = WorkerHub(self.cc.bind, on_hello=self._on_hello, on_event=self._on_event, on_lost=self._on_lost,
                             may_rejoin=lambda ident: ident not in self.restarting and ident not in self.replacing,
                             curve_dir=self.cc.curve_dir, insecure=self.cc.insecure, models=self.models.values(),
                             on_drain=lambda w: draining.on_drain(self, w))
        loop = asyncio.get_running_loop()
        #: The heartbeat and policy loops; ``_tasks``: those and the receiver.
        self._loops = [loop.create_task(self._heartbeat_loop()), loop.create_task(self._policy_loop())]
        self._tasks = [loop.create_task(self.hub.recv_loop()), *self._loops]
        return self.hub.endpoint

    async def wait_for_workers(self, n: int, timeout_s: float, procs=()) -> None:
        """Wait until ``n`` workers are admitted, at most ``timeout_s``. ``procs``: local workers' first processes;
        one that exits before it said Hello ends the wait at once (it cannot start: see its log). One that said
        Hello and then died is being restarted (``_restart``), which may still make the deadline: found in review,
        such a loss (an OOM while a slower worker still started) aborted the whole start."""
        deadline = time.monotonic() + timeout_s
        idents = {id(p): ident for ident, p in self.local_procs.items()}
        exited_s: dict[int, float] = {}
        while sum(w.ready for w in self.hub.workers.values()) < n:
            for p in procs:
                if p.poll() is None or self._said_hello(p, idents.get(id(p))):
                    continue
                # A moment's grace: its Hello, sent just before it died, may still wait in the socket unread.
                first_s = exited_s.setdefault(id(p), time.monotonic())
                if time.monotonic() - first_s >= EXIT_GRACE_S:
                    ident = idents.get(id(p))
                    wid = ident.decode(errors="replace") if ident is not None else "?"
                    raise WorkerLostError(
                        f"local worker {wid} exited ({exit_words(p)}) before it registered"
                        f"{'' if getattr(p, 'exit_reason', '') else ': see its log' + log_tail(p)}", worker_id=wid,
                        status=p.returncode)
            left = deadline - time.monotonic()
            if left <= 0:
                have = sum(w.ready for w in self.hub.workers.values())
                keys = (f"; with CURVE, that each key is in {self.cc.curve_dir}/workers/ (read at start) and each "
                        "--curve-server-key is this controller's public key" if self.cc.curve_dir else "")
                raise TimeoutError_(
                    f"{have} of {n} workers registered within {timeout_s:g} s: check that they can reach "
                    f"{self.hub.endpoint} (for remote ones, bind the controller to a reachable address){keys}",
                    timeout_s=timeout_s, ready=have, expected=n)
            self.worker_event.clear()
            try:
                await asyncio.wait_for(self.worker_event.wait(), min(left, 0.2))
            except asyncio.TimeoutError:
                pass
        widest = max((len([g for g in s.gpu_ids if not self.state.gpus[g].gone]) for s in self.state.servers),
                     default=0)
        check_tp_fits(self.models.values(), widest)
        # The policy's first tick sees the whole initial cluster: static layouts (dedicated, shared) place once.
        # It runs here, so that a layout that leaves a model without an instance (UnplacedModelError) refuses the
        # start: found in review, it was logged by the policy loop, and that model's requests timed out, for good.
        self.policy_running = True
        self._tick(raise_unplaced=True)

    def end_drain(self) -> None:
        """A close waiting for requests to finish stops waiting and goes on (a second Ctrl-C)."""
        self._drain_until_s = 0.0

    async def close(self, drain: bool = True) -> None:
        """Refuse new requests, let in-flight ones finish (up to drain_timeout_s), then stop the workers. The
        workers' socket is closed (its port free again) whatever fails on the way."""
        if self.closing:
            return
        self.closing = True
        try:
            if self.hub is not None:  # None: never started, or its bind failed (which leaves nothing behind)
                await self._close_workers(drain)
        finally:
            for t in self._tasks + list(self._bg):
                t.cancel()
            if self.hub is not None:
                self.hub.close()
            self.policy.close_fits()  # a Cluster closed in a long-lived program leaves no fitting process behind
            if self.history_record is not None:
                self.history_record.close()  # its last windows: a short join, the file is small

    async def _close_workers(self, drain: bool) -> None:
        if drain:
            self._drain_until_s = min(self._drain_until_s, time.monotonic() + self.cc.drain_timeout_s)
            while self._drainable() and time.monotonic() < self._drain_until_s:
                await asyncio.sleep(0.05)
        queued = sum(len(q) for q in self.driver.state.queues.values())
        for m in self.models:
            self.driver.fail_waiting(m, OverloadedError("the server is shutting down; the request was not started"),
                                     self.now_s())
        aborts = losses.fail_at_shutdown(self, queued, drain and self._drain_until_s > 0)  # 0: end_drain cut it
        for w, gid in aborts:
            if w.alive:
                fire(self.hub, w, P.Abort(id=self.hub.next_id(), request_id=gid))
        # The loops end before the Shutdowns go out: found in review, a heartbeat (or a tick's Evict) sent after a
        # worker had shut down failed, and logged it as lost ("send failed") during an orderly close.
        for t in self._loops:
            t.cancel()
        # Local workers get Shutdown and a moment to free their pools; remote ones stay up for the next controller.
        waits = {}
        # Copies: a send that fails takes its worker out of the table (and may start a restart) at once.
        for w in list(self.hub.workers.values()):
            if w.alive and w.proc is not None:
                waits[w.ident] = self.hub.start_call(w, P.Shutdown(id=self.hub.next_id()))
        if waits:
            await asyncio.wait(waits.values(), timeout=5.0)
        for t in self._tasks + list(self._bg):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._bg, return_exceptions=True)
        # Every local process, registered or not (a restart may have started one that never said Hello), all at
        # once; a graceful wait only for those that answered Shutdown (found in review: a stopped worker got one).
        answered = {i for i, f in waits.items() if f.done() and not f.cancelled() and f.exception() is None}
        procs = list(self.local_procs.items())
        if threading.main_thread().is_alive():
            ends = await asyncio.gather(*(asyncio.to_thread(reap, proc, ident in answered)
                                          for ident, proc in procs), return_exceptions=True)
        else:  # the interpreter exits (a Cluster never closed, closed by its finalizer): executors take no work
            ends = [reap_now(proc, ident in answered) for ident, proc in procs]  # now; they were told to stop
        for (ident, _), end in zip(procs, ends):
            # One that cannot be reaped must not keep the others, or the socket, from being closed (found in review:
            # a Ray worker's process, which had no pid, aborted the close and left the port bound).
            if isinstance(end, BaseException):
                log.error("stopping the process of worker %r failed", ident.decode(errors="replace"), exc_info=end)

    def _open_requests(self) -> int:
        return sum(len(q) for q in self.state.queues.values()) + sum(
            len(w.gens) for w in self.hub.workers.values() if w.alive)

    def _drainable(self) -> bool:
        """Whether a draining close still has requests to wait for: some in flight, or some queued while a worker
        is ready to serve them. Found in review: with the only worker restarting (a close stops restarts) or being
        replaced, the close waited the whole drain_timeout_s for queued requests nothing could serve any more."""
        if any(w.gens for w in self.hub.workers.values() if w.alive):
            return True
        return any(self.state.queues.values()) and any(w.ready for w in self.gpu_workers)

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg_done)
        return t

    def _bg_done(self, t: asyncio.Task) -> None:
        # Logged when it happens: otherwise only "Task exception was never retrieved", whenever the task is collected.
        self._bg.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("background task %s failed", getattr(t.get_coro(), "__qualname__", t.get_name()),
                      exc_info=t.exception())

    def activate_message(self, model: str, kv_blocks: int | None, shared: bool, group_id: str = "") -> P.Activate:
        """The Activate of ``model`` on a worker (shared: steps within co-serving's TPOT; group_id: a TP shard)."""
        return P.Activate(id=self.hub.next_id(), name=model, kv_blocks=kv_blocks, shared=shared, group_id=group_id,
                          engine=self.engine_config,
                          turn_s=self.policy_config.coserve_tpot_s if shared else 0.0)

    # ------------------------------------------------------------------------------------------- requests

    def model(self, name: str) -> ControllerModel:
        m = self.models.get(name)
        if m is None:
            raise UnknownModelError(
                f"the model {cut_name(name)} does not exist on this server; {served_models_words(name, self.models)}",
                param="model", model=name)
        return m

    def model_names(self) -> list[str]:
        return list(self.models)

    async def submit(self, model: str, prompt_ids: list[int], sampling, *, siblings=()) -> Req:
        return self.submit_nowait(model, prompt_ids, sampling, siblings=siblings)

    def submit_nowait(self, model: str, prompt_ids: list[int], sampling, *, siblings=()) -> Req:
        """Queue a request and route it at once when an instance has room. Returns the request to iterate.
        ``siblings``: the requests of the earlier choices of the same n > 1 request, which a refusal names among
        those waiting (found in review: the 503 of an n = 2 request counted its own first choice as another's)."""
        self.model(model)
        check_answer_fits(len(prompt_ids), sampling)
        if self.closing:
            raise OverloadedError("the server is shutting down and takes no new requests")
        if not self._workers_serve_or_come():
            raise NoWorkersError(  # the count and the client's way on (found in review: neither said)
                f"no live worker can serve requests right now (none of the {len(self.gpu_workers)} workers known "
                "serves or is (re)starting); the controller waits for workers to (re)join: retry once GET /health is "
                "200",
                workers=len(self.gpu_workers))
        waiting = self.state.queued(model)
        if waiting >= self.cc.max_queue:
            own = sum(1 for s in siblings if s.worker is None and not s.done)
            mine = f", {own} of them earlier choices of this request" if own else ""
            raise OverloadedError(
                f"{waiting} requests for {model!r} are already waiting for an instance (limit {self.cc.max_queue})"
                f"{mine}: retry later, add workers, or raise controller.max_queue", queued=waiting,
                limit=self.cc.max_queue)
        self._next_rid += 1
        req = Req(self._next_rid, model, prompt_ids, sampling, self.cc.request_timeout_s, siblings=siblings)
        req._abort_cb = self._abort
        # The prompt's length is the prefill load the policy scales on until the first token is out.
        self.driver.submit(model, req, self.now_s(), prompt_tokens=len(prompt_ids))
        return req

    def _abort(self, req: Req) -> None:
        if req.worker is None:
            if self.driver.withdraw(req.model, req, self.now_s()):
                self._request_done(req, "abort")
            return
        w = req.worker
        if w.gens.get(req.gid) is req:
            # Ended here at once, not when the worker confirms: a worker that no longer knows the request (its
            # Generate was lost or refused unread) never would. The worker takes the Abort before any later
            # Generate (one socket, in order), so the room it frees is there for the next request.
            self._end_gen(w, req.gid)
            self._request_done(req, "abort")
            if w.alive:
                fire(self.hub, w, P.Abort(id=self.hub.next_id(), request_id=req.gid))

    def _on_event(self, w: WorkerRecord, msg) -> None:
        if isinstance(msg, P.Tokens):
            req = w.gens.get(msg.id)
            if req is None:  # moved off w, or ended here first: its numbering goes with it
                w.seqs.pop(msg.id, None)
                return
            expected = w.seqs.get(msg.id, 0)
            # Lower: a worker from before Tokens.seq (all 0), which cannot tell.
            if msg.seq > expected:
                self._stream_gap(w, msg.id, expected, msg.seq)
                return
            w.seqs[msg.id] = expected + 1
            before = (req.generated, req.first_token_s)  # a resumed request had its first token on an earlier instance
            if req.push(msg.token_ids, msg.logprobs, msg.prompt_logprobs):  # no longer the instance's prefill load
                self.driver.prefill_done(req, self.now_s())
            self.metrics.tokens_pushed(req, *before)
            if msg.finished and msg.finish_reason == "abort":
                # Not ours: _abort takes a request off w.gens before its Abort goes out, so that answer finds none
                # here. A worker ends requests unasked only on its way out (SIGTERM: a container stop, a pod
                # eviction; worker/main.py closes its core, which aborts everything it runs). Found in review: the
                # client got a 200 with part of its text and finish_reason "abort", which the OpenAI API does not
                # have, where a SIGKILL had the request resume elsewhere. Now it is the same loss: every request of
                # w starts over after its tokens, and a local worker is restarted.
                self.hub.lose(w, f"it aborted request {msg.id}, which the controller did not abort: it is "
                                 f"shutting down")
                return
            if msg.finished:
                req.end_s = time.monotonic()
                self._end_gen(w, msg.id)
                req.ended(msg.finish_reason or "stop", lambda outcome: self._request_done(req, outcome))
        elif isinstance(msg, P.Error):
            req = w.gens.get(msg.id)
            if req is None:  # moved already (a lost rank's other requests), or a bug
                w.seqs.pop(msg.id, None)  # its stream's last word (found in review: one entry leaked per request)
                # A lost rank's: one per request the instance had, all moved at its first (found in review: 16 lines)
                lost_rank = isinstance(msg.exception(), WorkerLostError)
                log.log(logging.DEBUG if lost_rank else logging.INFO, "%r: error for a request not on it (%d): %s",
                        w, msg.id, msg.message)
                return
            err = msg.exception()
            if self.groups.rank_lost(w, req, err) or refusals.not_running(self, w, msg.id, req, err):
                return
            # No room on a co-served instance: on to an instance of the model that serves alone, if there is one.
            # Off w's table first: the reroute may lose w (its stop's Deactivate), whose requests start over.
            if isinstance(err, NoRoomHereError):
                del w.gens[msg.id]
                seq = w.seqs.pop(msg.id, None)
                if self.driver.reroute(req.model, req, req.instance_id, self.now_s(),
                                       prompt_tokens=req.resume_prompt_tokens):
                    self.metrics.rerouted.inc(model=req.model)
                    if req.generated:
                        self.metrics.resumed.inc(model=req.model, why="no_room")
                    return
                w.gens[msg.id] = req  # nothing moved: it ends here below
                if seq is not None:
                    w.seqs[msg.id] = seq
            self._end_gen(w, msg.id)
            req.fail(err)
            self._request_done(req, "error")

    def _stream_gap(self, w: WorkerRecord, gid: int, expected: int, got: int) -> None:
        """The stream of Generate ``gid`` on ``w`` skipped Tokens: w's connection was re-made (ZeroMQ reconnects
        silently, and a reconnection taking the routing id over tells neither end) and what it carried is lost,
        replies and requests alike. Found in review: the text came back with those tokens missing. Whatever was in
        flight either way may be gone, so this is w's loss: its requests start over after the tokens they have,
        and w, alive and connected again, is admitted again at once (cleaned, its generations aborted)."""
        self.stream_gaps += 1
        self.hub.rejoin(w, f"the stream of request {gid} lost {got - expected} Tokens message(s) (expected "
                           f"#{expected}, got #{got}): its connection was re-made, losing what it carried")

    def _end_gen(self, w: WorkerRecord, gid: int) -> None:
        req = w.gens.pop(gid)
        w.seqs.pop(gid, None)
        self.driver.request_finished(req.model, req.instance_id, self.now_s(), request=req)

    def _request_done(self, req: Req, outcome: str) -> None:
        """Count a request that ended (the driver has told the policy already)."""
        self.metrics.request_done(req, outcome)

    # ------------------------------------------------------------------------------------------- workers

    def _on_hello(self, ident: bytes, hello: P.Hello) -> None:
        w = WorkerRecord(worker_id=hello.worker_id, ident=ident, device=hello.device, pid=hello.pid,
                         capacity_bytes=hello.capacity_bytes, page_bytes=hello.page_bytes,
                         host=server_of(hello))
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
            for gid in stats.groups:
                await self.hub.call(w, P.LeaveGroup(id=self.hub.next_id(), group_id=gid), CALL_TIMEOUT_S)
        except WarmServeError as e:
            self.hub.lose(w, f"could not be admitted: {e}")
            return
        w.ready = True
        self.executor.pools_seen.add((w.capacity_bytes, w.page_bytes))
        # A remote worker restarted under a new id (the default holds its pid) takes a lost remote one's place on its
        # server and device (found in review: that one stayed in the gauge for good); one back under its own id takes
        # only its own (a later review: it took another's too, the gauge reading 0 with a worker still gone)
        if self.lost_workers.pop(w.ident, None) is None and w.ident not in self.local_spawn:
            for ident, (_, host, dev) in self.lost_workers.items():
                if (host, dev) == (w.host, w.device) and ident not in self.local_spawn:
                    del self.lost_workers[ident]
                    break
        back = self.restarting.pop(w.ident, None)
        if back is not None and not back.done():
            back.set_result(w)
        planned = self.replacing.get(w.ident)
        if planned is not None and not planned[1].done():
            # The successor of a worker replaced on purpose: the same device, under the same GPU id.
            old, joined = planned
            w.gpu_id = old.gpu_id
            self.gpu_workers[self.gpu_workers.index(old)] = w
            self.by_gpu[w.gpu_id] = w
            joined.set_result(w)
            self.worker_event.set()
            return
        self.gpu_workers.append(w)
        # A GPU id of its own, for good (a new host: a new server); the others keep theirs.
        (w.gpu_id,) = self.driver.add_gpus(w.host, [w.capacity_bytes])
        self.by_gpu[w.gpu_id] = w
        self.worker_event.set()
        self.groups.prewarm()  # communicators of tensor-parallel instances, while the workers are idle
        self.driver.route_all(self.now_s())

    def _on_lost(self, w: WorkerRecord, why: str) -> None:
        planned = self.replacing.get(w.ident)
        if not w.left_by_plan and (planned is None or planned[0] is w or planned[1].done()):
            # Not counted here: a worker that drained (workers_drained), or the fresh process of a planned replacement
            # lost while being admitted: its loss fails the replacement, whose _replace_failed counts the GPU lost.
            self.metrics.workers_lost.inc()
        if not w.draining:  # one that drained and left is no lost capacity (a local one: ``restarting`` has it)
            self.lost_workers[w.ident] = (w.worker_id, w.host, w.device)
        now = self.now_s()
        # Requests of tensor-parallel instances that lost a rank here ran on their rank 0 elsewhere: the same fate.
        # groups.lost sends nothing (its sends wait until this handling is over), so no other loss can route
        # requests to w's instances meanwhile: w.gens, taken first, is all of w's.
        gens = {**w.gens, **self.groups.lost(w)}
        gone = [i for i, inst in self.instances.items() if w in inst.workers]
        for iid in gone:
            del self.instances[iid]
        for pid in [p for p, pw in self.prewarms.items() if w in pw.workers]:
            del self.prewarms[pid]
        requeue = losses.requeue_lost(self, w, why, gens, now, gone)
        w.gens.clear()
        if w in self.gpu_workers:
            self.gpu_workers.remove(w)
        if self.by_gpu.get(w.gpu_id) is w:  # its GPU id is never used again (found in review: every record lost
            del self.by_gpu[w.gpu_id]  # stayed here, with its process and requests table, for the server's life)
        # Out of the worker table (and /stats): a restarted worker takes the same routing id, a new record and a
        # new GPU id; the loss is counted in workers_lost and logged with its reason.
        if self.hub.workers.get(w.ident) is w:
            del self.hub.workers[w.ident]
        if w.proc is not None and not w.rejoins:  # a rejoining process lives on: it is admitted again at once
            if w.left_by_plan:  # no crash in a row, so no back-off grown by earlier restarts
                self._restarts.pop(w.ident, None)
            self._restart_later(w)
        if w.gpu_id is not None:
            # Re-routed requests go to the front of their queue: they are the oldest.
            self.driver.lose_gpus([w.gpu_id], now, [(r.model, r, r.resume_prompt_tokens) for r in requeue])
        # A worker being replaced comes back, as a restarting one does (submit_nowait counts both): found in review,
        # a remote worker lost while a local one's fresh engine started failed the requests waiting for it. So does a
        # rejoining one, admitted again right after this, and one being admitted.
        if not self._workers_serve_or_come() and not w.rejoins:
            # Nothing left to serve them: say so now rather than at the request timeout.
            for model in self.models:
                self.driver.fail_waiting(model, NoWorkersError(
                    f"every worker is lost (the last: {w!r}, {why}); retry when workers rejoin",
                    worker_id=w.worker_id), now)

    # ------------------------------------------------------------------------------------------- loops

    async def _heartbeat_loop(self) -> None:
        stalls = LoopStalls(log, self.cc.heartbeat_interval_s)
        while True:
            await asyncio.sleep(self.cc.heartbeat_interval_s)
            late_s = stalls.round(now_s := time.monotonic())
            # Workers push their Stats (pages, KV blocks) with every heartbeat of theirs; nothing to poll.
            try:
                self.hub.beat(now_s, self.cc.worker_timeout_s, late_s)
            except Exception as e:
                # A loss's handling reaches the policy (route_all): found in review, one bug there ended the
                # heartbeats for good, and with them the detection of every later loss. Logged with its trace.
                self._failures["heartbeat"].failed(e)

    def _tick(self, raise_unplaced: bool = False) -> None:
        """One policy tick over the workers there are (none: the first to join starts the ticks). A policy bug must
        not stop serving: it is logged with its trace. ``raise_unplaced``: the start's first tick, where a layout
        that leaves a model without an instance (UnplacedModelError) refuses the start."""
        try:
            if self.gpu_workers:
                self.groups.prewarm()
                self.observed.feed(self)
                self.driver.tick(self.now_s())
                self._layout_log.after_tick(self.driver.policy, self.state.live_gpus())
        except Exception as e:
            if raise_unplaced and isinstance(e, UnplacedModelError):
                raise
            self._failures["policy tick"].failed(e)

    async def _policy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cc.tick_s)
            if self.policy_running:
                self._tick()
            # Apart from the tick (a failing one kept queued requests from timing out), policy running or not (found
            # in review: a request submitted while wait_for_workers still waited outlived its deadline until then)
            try:
                self.executor.expire_requests()
            except Exception as e:
                self._failures["expiring requests"].failed(e)

    # ------------------------------------------------------------------------------------------- views

    def health(self) -> dict:
        return views.health(self)

    def stats(self) -> dict:
        """A plain-dict snapshot: workers, instances, prewarms, queues (what `Cluster.stats()` returns), and the
        planned engine restarts of cold starts without a warm engine (``engine_starts``)."""
        out = views.stats(self)
        out["engine_starts"] = list(self.engine_starts)
        return out
