"""The worker's background work, one tick at a time: loads that finished, engine steps, idle KV growth (a mixin of
``worker.core.WorkerCore``: the same state, on the same thread).

A tick runs its stages in turn, and a stage's unexpected failure stays with what it concerns (found in review: one
exception ended the whole tick, skipping the stages after it every time it recurred, and in an in-process worker it
reached whichever caller happened to pump): a load that cannot finish is dropped and its Prewarm answered; an
instance whose step fails answers its own requests and takes the next ones; an instance whose idle KV growth fails
tries again later; anything else is logged and the next stage runs.

Errors: a request is checked when it arrives (``Engine.add_request``), so what a step raises later is never the
requester's mistake, whatever its Python type: it travels as EngineError (found in review: an engine bug's
IndexError reached the client as InvalidArgumentError, a 400). Typed errors about the world outside the engine's
code (OutOfMemoryError, DriverError, ClosedError, ...) travel as themselves.
"""

from __future__ import annotations

import logging
import time
import traceback

from .. import errors
from .. import protocol as P
from ..engine.step_meter import turn_tokens
from ..geometry import pages_for
from .tp import lost

log = logging.getLogger("warmserve.worker")


def as_typed(exc: BaseException) -> BaseException:
    """Caller mistakes the engine reports as plain ValueError travel as InvalidArgumentError (for a request being
    applied, whose arguments are the caller's)."""
    if isinstance(exc, errors.WarmServeError):
        return exc
    if isinstance(exc, (ValueError, TypeError, KeyError, IndexError)):
        return errors.InvalidArgumentError(f"{type(exc).__name__}: {exc}")
    return exc


def engine_failure(exc: BaseException, model: str, worker_id: str, doing: str) -> errors.WarmServeError:
    """What the requesters of a failure in background work are told: its typed error, unless that blames them."""
    if isinstance(exc, errors.WarmServeError) and not isinstance(exc, errors.InvalidArgumentError):
        return exc
    return errors.EngineError(
        f"worker {worker_id} failed {doing} for {model!r}: {type(exc).__name__}: {exc}. Not the request's fault: "
        "send it again (the worker goes on); if it recurs, report it with the worker's log, which has the traceback",
        model=model, cause=type(exc).__name__)


def log_failure(what: str, *args) -> None:
    """Log the exception being handled with its traceback as text: a LogRecord holding the exception itself
    would keep the failed frames, and the weight and KV views in them, alive (a handler that keeps records,
    pytest's among them, then made the model's close fail with ViewsAliveError)."""
    log.error(what + "\n%s", *args, traceback.format_exc())


def weight_pages(lm, page_bytes: int) -> int:
    """Pages under the weights (their region is page-rounded; the KV cache starts after it)."""
    return pages_for(int(getattr(lm, "weight_region_bytes", lm.weight_bytes)), page_bytes)


class BackgroundWork:
    """tick() and its stages; the state (models, instances, generations, emit) is WorkerCore's."""

    #: Seconds an instance whose idle KV growth failed waits before it tries again (each failure is logged).
    idle_grow_retry_s = 5.0

    def tick(self) -> bool:
        """Advance loads and step every running instance once; True while engines have work left."""
        for stage in (self._poll_loads, self.groups.poll, self._step_instances, self._grow_idle,
                      self._tp_housekeeping):
            try:
                stage()
            except Exception:  # its own failures are contained inside; this is a bug in the stage itself
                log_failure("worker %s: tick stage %s failed; the others go on", self.worker_id,
                            getattr(stage, "__qualname__", stage))
        return self.busy()

    # ------------------------------------------------------------------ loads

    def _poll_loads(self) -> None:
        now = time.monotonic()
        for m in list(self.models.values()):
            if m.state != "loading":
                continue
            try:
                self._poll_load(m, now)
            except Exception as e:
                log_failure("worker %s: finishing the load of %s failed; it is dropped", self.worker_id, m.name)
                self._fail_load(m, engine_failure(e, m.name, self.worker_id, "finishing the load"))

    def _poll_load(self, m, now: float) -> None:
        lm = err = None
        try:
            lm = m.job.wait(0.0)  # O(1): the load converts and finishes on its own thread (engine/loader.py)
        except errors.TimeoutError_:
            pass
        except Exception as e:  # the load failed (out of memory, bad checkpoint): tell who asked
            err = e
        done = lm is not None or err is not None
        m.loaded_bytes, m.total_bytes = (int(x) for x in m.job.progress)
        if m.origin is not None and m.loaded_bytes != m.reported_bytes and (
            done or now - m.reported_at_s >= self.progress_interval_s
        ):
            m.reported_bytes, m.reported_at_s = m.loaded_bytes, now
            self.emit(m.origin[0], P.PrewarmProgress(
                id=m.origin[1], name=m.name, loaded_bytes=m.loaded_bytes, total_bytes=m.total_bytes))
        if err is not None:
            del self.models[m.name]
            if m.origin is not None:
                self.emit(m.origin[0], P.Error.of(m.origin[1], as_typed(err)))
        elif lm is not None:
            m.lm, m.job, m.state = lm, None, "prewarmed"
            load_s = time.monotonic() - m.started_s
            capture_s = self._capture_graphs(m)
            if m.origin is not None:
                self.emit(m.origin[0], P.Prewarmed(
                    id=m.origin[1], name=m.name, weight_bytes=int(lm.weight_bytes),
                    pages=weight_pages(lm, self._page_bytes()), max_context=int(lm.max_context),
                    load_s=load_s, graphs_capture_s=capture_s,
                ))

    def _fail_load(self, m, err: BaseException) -> None:
        """Drop a model whose load could not finish (its pages go back) and answer its Prewarm with why."""
        self.models.pop(m.name, None)
        try:
            if m.job is not None:
                m.job.cancel()
            if m.lm is not None:
                self._close_model(m.lm)
        except Exception:  # its pages stay with the slot until the process ends; the Prewarm is answered anyway
            log_failure("worker %s: the failed load of %s did not close", self.worker_id, m.name)
        if m.origin is not None:
            self.emit(m.origin[0], P.Error.of(m.origin[1], err))

    def _capture_graphs(self, m) -> float:
        """Capture the decode CUDA graphs of a model just prewarmed (engine/graphs.py), so an instance activated
        from it starts with them ready; nothing on CPU or for a tensor-parallel shard. Seconds spent (it runs on
        this thread: other instances' steps wait that long)."""
        from ..engine.engine import DEFAULT_MAX_NUM_SEQS
        from ..engine.graphs import prewarm_decode_graphs

        n = m.max_num_seqs or self.engine_config.max_num_seqs or DEFAULT_MAX_NUM_SEQS
        g = prewarm_decode_graphs(m.lm, n)
        return float(g.stats.capture_s) if g is not None else 0.0

    @staticmethod
    def _close_model(lm) -> None:
        """Evict a model's weights, and its decode graphs first (their memory is not the pool's)."""
        from ..engine.graphs import release_decode_graphs

        release_decode_graphs(lm)
        lm.close()

    # ------------------------------------------------------------------ instances

    def _step_instances(self) -> None:
        live = [i for i in self.instances.values()
                if not i.follower and i.broken is None and (i.requests or i.engine.has_unfinished())]
        if not live:
            return
        # Shared instances take turns, one engine step each, so none starves the others.
        self._rr = (self._rr + 1) % len(live)
        for inst in live[self._rr:] + live[: self._rr]:
            try:
                if inst.tp is not None:
                    try:
                        inst.tp.send(inst.engine, run=True)
                    except Exception as e:  # a rank is gone, or the ranks diverged: the instance cannot step again
                        self._tp_failed(inst, e)
                        continue
                    try:
                        outputs = inst.engine.step()
                    except Exception as e:
                        # Failed on every rank alike, it is an engine failure as at tp = 1, answered below, and the
                        # group serves on (found in review: it was answered as a lost worker, whose instance the
                        # controller stops). Else a rank may wait in the step's collectives: the group is gone.
                        if not inst.tp.step_failed_together(e):
                            self._tp_failed(inst, lost(inst.name, inst.tp.group, e))
                            continue
                        raise
                else:
                    outputs = inst.engine.step(self._turn_tokens(inst, len(live)))
                self._emit_outputs(inst, outputs)
            except Exception as e:  # an engine failure fails its requests, not the worker
                log_failure("worker %s: a step of %s failed; its %d request(s) end with it", self.worker_id,
                            inst.name, len(inst.requests))
                self._fail_requests(inst, engine_failure(e, inst.name, self.worker_id, "an engine step"))

    def _turn_tokens(self, inst, live: int) -> int | None:
        """The token budget of a co-served instance's step: its share of its turn (Activate.turn_s over the ``live``
        instances taking turns) at its measured cost per token (step_meter.turn_tokens); None (max_batch_tokens)
        alone on the worker or without a turn. Found in review: every step could prefill max_batch_tokens (2048)
        prompt tokens, so a long prompt on one co-served model froze the others' decodes for seconds per step (on
        a CPU worker, 8-token requests took up to 15 s against a 0.1 s TPOT target). Bounded whenever another
        instance is here, live or not: a request arriving at an idle one waits for the step under way too."""
        if inst.turn_s <= 0 or len(self.instances) < 2:
            return None
        e = inst.engine
        return turn_tokens(inst.turn_s / live, e.prefill_meter, e.num_running, e.scheduler.max_batch_tokens)

    def _fail_requests(self, inst, err: BaseException) -> None:
        for rid, key in list(inst.requests.items()):
            self.generations.pop(key, None)
            self.emit(key[0], P.Error.of(key[1], err))
            try:
                self._engine_abort(inst, rid)
            except Exception:  # the engine is broken already; its requests are answered
                pass
        inst.requests.clear()

    def _emit_outputs(self, inst, outputs) -> None:
        for out in outputs:
            key = inst.requests.get(out.request_id)
            if key is None:  # aborted here already
                continue
            if out.finished:
                del inst.requests[out.request_id]
                self.generations.pop(key, None)
            if out.error is not None:  # ended by the engine without its tokens (Engine._refuse_never_fitting)
                self.emit(key[0], P.Error.of(key[1], out.error))
                continue
            self.emit(key[0], P.Tokens(
                id=key[1], token_ids=list(out.token_ids), finished=bool(out.finished),
                finish_reason=out.finish_reason if out.finished else None,
                num_prompt_tokens=int(out.num_prompt_tokens), num_output_tokens=int(out.num_output_tokens),
                logprobs=out.logprobs or [],
                prompt_logprobs=out.prompt_logprobs or [],
            ))

    def _grow_idle(self) -> None:
        """Idle instances map KV blocks toward a target set for them (the controller's KV reservation) too, as
        steps do for busy ones (throttled alike), so the headroom reserved for a burst is there when it comes
        (found in review: an idle instance stayed at one step's worth until its first request). Not toward "all
        of them" (an Activate without a target): idle, that would take every free page from the prewarms in a
        second. Tensor-parallel ones grow together on their leader's plans. A growth that fails (a driver
        error: a full pool only stops it) is headroom missed, not a request failed: tried again later. None while
        a neighbour on the pool is starved (``Engine.pool_starved``): it takes that headroom back at its step, and
        growing it again each idle turn only mapped and unmapped the same pages."""
        now = time.monotonic()
        for inst in list(self.instances.values()):
            kv = inst.engine.kv
            if (inst.tp is None and kv.target_free_blocks < kv.total_blocks and not inst.engine.has_unfinished()
                    and now >= inst.grow_retry_s and not inst.engine.pool_starved):
                try:
                    kv.grow()
                except Exception:
                    inst.grow_retry_s = now + self.idle_grow_retry_s
                    log_failure("worker %s: idle KV growth of %s failed; it tries again in %.1f s",
                                self.worker_id, inst.name, self.idle_grow_retry_s)
