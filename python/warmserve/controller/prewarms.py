"""Loads of weights onto workers as the live executor tracks them (``LivePrewarm``: a prewarm, or a cold start's
load; one shard per rank), and the healing of a worker that holds a copy of the model the controller does not know
of (``prewarm_call``)."""

from __future__ import annotations

import asyncio
import logging

import msgspec

from warmserve import protocol as P
from warmserve.controller.workers import WorkerRecord
from warmserve.errors import ModelStateError, TimeoutError_, UnknownModelError

log = logging.getLogger("warmserve.controller")


class LivePrewarm:
    """A prewarm (or a cold start's load) as the controller tracks it on its workers (one shard per rank)."""

    __slots__ = ("pid", "model", "workers", "loaded", "futs")

    def __init__(self, pid: str, model: str, workers: list[WorkerRecord]):
        self.pid, self.model, self.workers = pid, model, workers
        self.loaded = False
        #: Each rank's Prewarm call's final reply.
        self.futs: list[asyncio.Future] = []

    @property
    def worker(self) -> WorkerRecord:
        return self.workers[0]

    def start(self, ctl, on_progress=None) -> None:
        """Send the Prewarm of every rank's shard (rank i to workers[i])."""
        m, hub, tp = ctl.models[self.model], ctl.hub, len(self.workers)
        seqs = ctl.engine_config.max_num_seqs
        self.futs = [prewarm_call(ctl, self, w, P.Prewarm(id=hub.next_id(), path=m.spec.path, name=m.name,
                                                          dtype=m.spec.dtype, tp=tp, rank=r if tp > 1 else 0,
                                                          max_num_seqs=seqs), on_progress)
                     for r, w in enumerate(self.workers)]

    async def wait(self, timeout_s: float) -> None:
        """Until every shard is loaded, within ``timeout_s`` in all (``TimeoutError_``, naming the workers whose
        shard is missing); raises the first failure to arrive, whichever rank's. Found in review: the ranks were
        awaited in turn, each with the whole timeout, so a rank refused at once was seen only after rank 0's load,
        and a load could wait tp x the timeout. The timeout was a bare asyncio.TimeoutError: it named no worker,
        and a model whose starts all timed out failed its waiting requests with a 503 rather than the 504 the
        worker-call timeouts give (the driver passes a failure's http_status on)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = set(self.futs)  # the futures themselves are never cancelled here: others read them (holders)
        while pending:
            left_s = deadline - loop.time()
            if left_s <= 0:
                late = [w for w, f in zip(self.workers, self.futs) if f in pending]
                raise TimeoutError_(
                    f"{len(late)} of {len(self.futs)} shard(s) of {self.model!r} not loaded within {timeout_s:g} s "
                    f"(on {', '.join(map(repr, late))}): the worker is stalled or reads the checkpoint far too slowly; "
                    "its log says what it was doing", timeout_s=timeout_s,
                    model=self.model, shards_missing=len(late))
            done, pending = await asyncio.wait(pending, timeout=left_s, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                reply = fut.result()
                if isinstance(reply, P.Error):
                    raise reply.exception()

    def holders(self) -> list[WorkerRecord]:
        """The workers that may hold a shard of it: all but those whose Prewarm was answered with an error (nothing
        was loaded there). A load still under way counts: an Evict cancels it (worker/core.py, _evict)."""
        if not self.futs:  # kept weights (keep_prewarm): resident, no load of its own
            return list(self.workers)
        return [w for w, f in zip(self.workers, self.futs)
                if not (f.done() and not f.cancelled() and f.exception() is None and isinstance(f.result(), P.Error))]


def start_words(kind: str, pw: LivePrewarm | None) -> str:
    """How a start got its weights, for its ready line: ``kind`` in the prewarm metrics' words
    (``executor.LiveInstance.start_kind``), ``pw`` the prewarm it loaded.
    Found in review: a load of its own was called a "cold load", which reads as from the files, where the worker may
    have read them from its host checkpoint cache (which the controller is not told): a miss says the bytes and
    seconds the worker reported; and a start from a prewarm still loading was called a hit."""
    if kind != "prewarm miss" or pw is None:
        return kind
    done = [f.result() for f in pw.futs if f.done() and not f.cancelled() and f.exception() is None
            and isinstance(f.result(), P.Prewarmed)]
    if not done:
        return kind
    mib = sum(r.weight_bytes for r in done) / 2 ** 20
    return f"prewarm miss: loaded {mib:.1f} MiB in {max(r.load_s for r in done):.2f} s"


def tracked_copies(ctl, w: WorkerRecord, model: str) -> int:
    """How many copies of ``model`` the driver counts on ``w``'s GPU: instances (starting or running), prewarms and
    a stopped instance's kept weights. Placement puts one at most there: a load's own (its prewarm, or the start it
    is for)."""
    d, g = ctl.driver, w.gpu_id
    return (sum(i.model == model and g in i.gpus for i in d.state.instances.values())
            + sum(p.model == model and g in p.gpus for p in d.state.prewarms.values())
            + sum(k.model == model and g in k.gpus for k in d.kept.values()))


def _untracked_copy(ctl, pw: LivePrewarm, w: WorkerRecord, reply) -> str | None:
    """The state of the copy of ``pw``'s model that refused its Prewarm on ``w`` ("prewarmed", "loading",
    "running"), when the driver counts none there but ``pw`` itself (``tracked_copies``); None for any other reply,
    and when the driver no longer counts ``pw`` either (found in review: a load the driver dropped while its refusal
    was in flight was sent again, and loaded a copy nobody tracked)."""
    if not isinstance(reply, P.Error):
        return None
    exc = reply.exception()
    if not isinstance(exc, ModelStateError) or getattr(exc, "model", None) != pw.model:
        return None
    state = getattr(exc, "state", None)
    if state not in ("prewarmed", "loading", "running") or tracked_copies(ctl, w, pw.model) != 1:
        return None
    return state


def prewarm_call(ctl, pw: LivePrewarm, w: WorkerRecord, msg: P.Prewarm, on_progress=None) -> asyncio.Future:
    """Send ``msg`` (a shard of ``pw``) to ``w``; the future of its final reply, as ``WorkerHub.start_call``'s.

    A Prewarm refused because ``w`` holds a copy of the model the controller does not count (a shard whose Evict
    was refused or lost, a load it gave up on) makes the copy evicted there and the Prewarm sent once more: the
    reply is then the second Prewarm's. Found in CI: after a rank of a tp = 2 instance was killed, the surviving
    worker kept its shard while the driver held the GPU empty, and every start of the model there was refused
    ("already prewarmed") for as long as the run lasted, every waiting request answered 503. A running copy (an
    instance the controller does not know of: a stop whose Deactivate failed) is deactivated first; found in review,
    its Evict alone was refused and the start given up, and so was every later one. A Deactivate or Evict refused
    (but for "not running" or "not there": done already) leaves the first refusal as the answer."""
    hub = ctl.hub
    out = asyncio.get_running_loop().create_future()
    out.add_done_callback(lambda f: f.cancelled() or f.exception())  # as start_call's: read by whoever needs it

    def relay(f: asyncio.Future) -> None:
        if out.done():  # failed meanwhile (the load's time ran out: executor._one_done)
            return
        if f.cancelled():
            out.cancel()
        elif f.exception() is not None:
            out.set_exception(f.exception())
        else:
            out.set_result(f.result())

    def refused(f: asyncio.Future) -> None:
        state = None if out.done() or f.cancelled() or f.exception() is not None else (
            _untracked_copy(ctl, pw, w, f.result()))
        if state is None:
            relay(f)
            return
        log.warning("%r holds a copy of %s (%s) that the controller does not count: %sevicted there, and its "
                    "prewarm %s sent again", w, pw.model, state, "deactivated and " if state == "running" else "",
                    pw.pid)
        if state == "running":
            stop = hub.start_call(w, P.Deactivate(id=hub.next_id(), name=pw.model))
            stop.add_done_callback(lambda d: deactivated(d, f))
        else:
            evict(f)

    def deactivated(d: asyncio.Future, first: asyncio.Future) -> None:
        if out.done():
            return
        if d.cancelled() or d.exception() is not None:  # the worker is lost
            relay(first)
            return
        reply = d.result()
        # (not running any more: stopped meanwhile, by a stop's Deactivate sent again, say)
        if isinstance(reply, P.Error) and not isinstance(reply.exception(), ModelStateError):
            log.warning("%r could not stop its copy of %s that the controller does not count: %s", w, pw.model,
                        reply.message)
            relay(first)
            return
        evict(first)

    def evict(first: asyncio.Future) -> None:
        hub.start_call(w, P.Evict(id=hub.next_id(), name=pw.model)).add_done_callback(lambda e: evicted(e, first))

    def evicted(e: asyncio.Future, first: asyncio.Future) -> None:
        if out.done():
            return
        if e.cancelled() or e.exception() is not None:  # the worker is lost: its loss ends the load's users
            relay(first)
            return
        reply = e.result()
        if not (isinstance(reply, P.Evicted)
                or isinstance(reply, P.Error) and isinstance(reply.exception(), UnknownModelError)):  # gone already
            log.warning("%r kept its copy of %s that the controller does not count: %s", w, pw.model,
                        getattr(reply, "message", reply))
            relay(first)
            return
        if tracked_copies(ctl, w, pw.model) != 1:  # the driver dropped the load while the Evict ran
            relay(first)
            return
        again = hub.start_call(w, msgspec.structs.replace(msg, id=hub.next_id()), on_progress=on_progress)
        again.add_done_callback(relay)

    hub.start_call(w, msg, on_progress=on_progress).add_done_callback(refused)
    return out
