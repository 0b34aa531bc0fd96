"""A worker that answers a request's Generate with "the model is not running here" (ModelStateError) or "not held
here" (UnknownModelError): the instance the controller routed it to was deactivated, switched or evicted on that
worker before the request got there. The client did nothing wrong (a model it names is checked before the
request is queued, ``Controller.model``): this is the controller's own race between routing and the switch, so
the request is handled as one on a lost rank is, not answered with the worker's 409 or 404 (found in review)."""

from __future__ import annotations

import logging

from warmserve.controller.errors import InstanceGoneError
from warmserve.controller.instance_words import instance_words
from warmserve.errors import ModelStateError, UnknownModelError
from warmserve.policy import actions as A

log = logging.getLogger("warmserve.controller")


def not_running(ctl, w, gid: int, req, error: BaseException) -> bool:
    """``w`` answered Generate ``gid`` of ``req`` (still on ``w.gens``) with ``error``. False: not a refusal of
    this kind, the caller goes on. Otherwise True, handled: the instance the request was sent to does not serve on
    ``w``, so it is stopped and every request it runs starts over after its tokens (``actions.Migrate``, which
    puts them at the front of their queue; the policy starts an instance again). Each such refusal of a request
    counts against controller.max_worker_losses_per_request, as a lost worker does (a bound, should the switch
    recur); past it, or with the instance already gone from the controller's books, the request fails with
    InstanceGoneError (HTTP 503, Retry-After)."""
    if not isinstance(error, (ModelStateError, UnknownModelError)):
        return False
    iid, limit = req.instance_id, ctl.cc.max_worker_losses_per_request
    req.reroutes += 1
    live = ctl.instances.get(iid)
    if req.reroutes < limit and live is not None and live.worker is w and iid in ctl.driver.state.instances:
        log.warning("%r refused request %d of %s (%s): the instance is stopped and its requests start over", w, gid,
                    instance_words(iid, req.model), error)
        live.refused = True
        ctl.driver.apply(A.Migrate(iid), ctl.now_s())
        return True
    why = (f"it started over {req.reroutes - 1} time(s), the most controller.max_worker_losses_per_request={limit} "
           f"allows" if req.reroutes >= limit else f"the controller runs no instance {iid} there any more")
    ctl._end_gen(w, gid)
    req.fail(InstanceGoneError(
        f"{w!r} no longer ran {req.model!r} when the request got there ({error}); {why}: retry it",
        model=req.model, worker_id=w.worker_id, instance_id=iid, refusals=req.reroutes, limit=limit))
    ctl._request_done(req, "error")
    return True
