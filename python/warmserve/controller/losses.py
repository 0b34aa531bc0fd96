"""What becomes of the requests a lost worker ran (``Controller._on_lost``): each starts over elsewhere after its
tokens, unless it has now been under ``controller.max_worker_losses_per_request`` lost workers, in case it is what
kills them; then it fails. A worker that drained (``controller/draining.py``) and left with requests still on it
(its drain's time ran out: ``WorkerRecord.left_by_plan``) lost them by plan, not by a crash: they start over all the
same, uncounted. Found in
review: two rolling restarts failed every long stream they caught twice, as if it were a poison request."""

from __future__ import annotations

import logging

from warmserve.controller.errors import OverloadedError
from warmserve.errors import WorkerLostError

log = logging.getLogger("warmserve.controller")


def requeue_lost(ctl, w, why: str, gens: dict, now_s: float, instances: list[str]) -> list:
    """The requests of ``gens`` (those of lost worker ``w``) that start over, oldest first, for ``lose_gpus`` to put
    back at the front of their queues; the others are failed and finished here. ``instances``: the ids of the
    instances that went with ``w``, for the log line."""
    requeue = []
    drained = w.left_by_plan
    ended = sum(1 for r in gens.values() if r.done)  # answered already: neither started over nor failed here
    for req in sorted(gens.values(), key=lambda r: r.rid):  # oldest first; each starts over after its tokens
        if req.done:  # found by mutation review: it fell through to the failure below, its outcome counted twice
            continue
        req.reroutes += 0 if drained else 1
        if req.reroutes < ctl.cc.max_worker_losses_per_request:
            requeue.append(req)
            req.requeued(ctl.cc.request_timeout_s)
            ctl.metrics.rerouted.inc(model=req.model)
            if req.generated:
                ctl.metrics.resumed.inc(model=req.model, why="worker_drained" if drained else "worker_lost")
            continue
        req.fail(WorkerLostError(
            f"{w!r} was lost ({why}): workers lost under this request: {req.reroutes} (after {req.generated} "
            f"tokens), so it is not started over again in case it is what kills them; retry it, or raise "
            f"controller.max_worker_losses_per_request", worker_id=w.worker_id, generated_tokens=req.generated,
            workers_lost=req.reroutes))
        ctl.driver.request_finished(req.model, req.instance_id, now_s, route=False, request=req)
        ctl._request_done(req, "worker_lost")
    in_flight = len(gens) - ended
    # Found in review of the logs: the loss's line named neither the requests nor the instances that went with the
    # worker, so an operator could not tell what became of them (the instances' replacements showed only as new
    # "ready" lines). A loss with neither says nothing more.
    gone = f"instance(s) {', '.join(instances)}" if instances else ""
    if in_flight:
        failed, resumed = in_flight - len(requeue), sum(1 for r in requeue if r.generated)
        log.log(logging.WARNING if failed else logging.INFO,
                "%r %s with %s%d request(s) in flight: %d start over elsewhere (%d after tokens already sent)%s", w,
                "left" if drained else "lost", gone and gone + " and ", in_flight, len(requeue), resumed,
                f"; {failed} failed, each now under {ctl.cc.max_worker_losses_per_request} lost workers (a request "
                "that may be what kills them; controller.max_worker_losses_per_request)" if failed else "")
    elif instances:
        log.info("%r %s with %s and no request in flight", w, "left" if drained else "lost", gone)
    return requeue


def fail_at_shutdown(ctl, queued: int, drained: bool) -> list:
    """Fail every request still running as the server shuts down (``Controller._close_workers``, once its drain is
    over or skipped, after the ``queued`` ones waiting were failed) and say how many, with why; returns the (worker,
    generation id) of those on remote workers, whose KV blocks an Abort frees. Every request is taken off its worker
    before the first Abort goes out. Found in review: an Abort that cannot be sent loses its worker, and that loss
    started over the worker's requests not failed yet (sent to another worker during the shutdown) and counted one
    failed already as lost with the worker."""
    aborts, cut = [], 0
    for w in list(ctl.hub.workers.values()):
        for gid, req in w.gens.items():
            if not req.done:  # counted as the queued ones failed before are (found in review: these were not)
                req.fail(OverloadedError("the server shut down before the request finished"))
                ctl._request_done(req, "error")
                cut += 1
            if w.alive and w.proc is None:  # a remote worker stays up: free the request's KV blocks now
                aborts.append((w, gid))
        w.gens.clear()
    if cut or queued:
        # Found in review of the logs: the requests a shutdown cut left no line saying so, or why (exit_close.py
        # closes a Cluster left open at interpreter exit without a drain).
        log.warning("shutdown: %d request(s) still running and %d waiting were failed: %s", cut, queued,
                    f"the drain's {ctl.cc.drain_timeout_s:g} s ran out (controller.drain_timeout_s lets them finish)"
                    if drained else "stopped without a drain (a second Ctrl-C or SIGTERM, close(drain=False), or "
                    "the interpreter exiting with a warmserve.Cluster still open)")
    return aborts
