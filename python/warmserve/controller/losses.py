"""What becomes of the requests a lost worker ran (``Controller._on_lost``): each starts over elsewhere after its
tokens, unless it has now been under ``controller.max_worker_losses_per_request`` lost workers, in case it is what
kills them; then it fails. A worker that drained (``controller/draining.py``) and left with requests still on it
(its drain's time ran out: ``WorkerRecord.left_by_plan``) lost them by plan, not by a crash: they start over all the
same, uncounted. Found in
review: two rolling restarts failed every long stream they caught twice, as if it were a poison request."""

from __future__ import annotations

from warmserve.errors import WorkerLostError


def requeue_lost(ctl, w, why: str, gens: dict, now_s: float) -> list:
    """The requests of ``gens`` (those of lost worker ``w``) that start over, oldest first, for ``lose_gpus`` to put
    back at the front of their queues; the others are failed and finished here."""
    requeue = []
    drained = w.left_by_plan
    for req in sorted(gens.values(), key=lambda r: r.rid):  # oldest first; each starts over after its tokens
        req.reroutes += 0 if drained else 1
        if not req.done and req.reroutes < ctl.cc.max_worker_losses_per_request:
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
    return requeue
