"""The ends of requests that wait too long, run by the controller's policy loop at every tick whether the policy
runs yet or not (``Controller._policy_loop``): queued past their deadline, sent to a worker that produced no token
for ``request_timeout_s``, or waiting for a model no worker admitted so far can hold."""

from __future__ import annotations

import logging
import time

from warmserve import protocol as P
from warmserve.errors import TimeoutError_

log = logging.getLogger("warmserve.controller")


def expire(ex) -> None:
    """Fail what waited too long, for the LiveExecutor ``ex``: queued requests past their deadline, and requests
    sent to a worker that produced no token for ``request_timeout_s`` (aborted there). Only admitted workers
    (``gpu_workers``) hold requests: a loss requeues its worker's (with a fresh deadline, here in the queue), and a
    record being admitted, restarted or replaced holds none. Found in review: before the policy ran
    (``wait_for_workers`` still waiting for a worker) nothing expired at all; the unheld check waits for it (a
    worker still to join may hold the model)."""
    from warmserve.controller.executor import fire  # the executor imports this module

    ctl = ex.ctl
    if ctl.policy_running:
        fail_unheld(ex)
    now = time.monotonic()
    for model, q in ctl.state.queues.items():
        # the whole queue: a request that started over (requeued) sits at its front with a later deadline
        for req in [r for r in q if r.deadline_s < now and not _family_progressed(r, now, ctl.cc.request_timeout_s)]:
            ctl.driver.withdraw(model, req, ctl.now_s())
            err = TimeoutError_(
                f"no instance of {model!r} could take the request within {ctl.cc.request_timeout_s:g} s"
                f"{_only_lost_hold(ctl, model)}; retry later or add workers", timeout_s=ctl.cc.request_timeout_s)
            req.fail(err)
            ctl._request_done(req, "timeout")
    for w in list(ctl.gpu_workers):  # an Abort that cannot be sent loses its worker (and edits the list)
        for gid, req in list(w.gens.items()):
            if w.gens.get(gid) is not req:
                # Moved by a loss of w that an Abort of this loop caused (requeued, w.gens cleared): failing it
                # here ended a request still queued, and _end_gen raised KeyError (found in review).
                continue
            last = max(req.last_token_s or req.arrival_s, req.sent_s or 0.0)  # sent again: counts from then
            if not req.done and now - last > ctl.cc.request_timeout_s:
                req.fail(TimeoutError_(no_token_message(ctl, w, req), timeout_s=ctl.cc.request_timeout_s))
                ctl._end_gen(w, gid)  # not left to the worker's answer, as in _abort
                ctl._request_done(req, "timeout")
                if w.alive:
                    fire(ctl.hub, w, P.Abort(id=ctl.hub.next_id(), request_id=gid))


def _only_lost_hold(ctl, model: str) -> str:
    """", and why": when no live worker's pool can hold ``model`` (the workers that could are lost; its requests
    wait for one to rejoin, docs/api.md), said in the 504. Found in review: the timeout named no cause."""
    from warmserve.controller.launch import unheld  # launch imports the controller, which imports this module

    live = {(w.capacity_bytes, w.page_bytes) for w in ctl.gpu_workers if w.alive}
    if not live or unheld(ctl.models[model], live) is None:
        return ""
    return (": no live worker's pool can hold it, and those that could are lost; it is served again once one of "
            "them rejoins")


def _family_progressed(req, now: float, timeout_s: float) -> bool:
    """Whether a sibling of ``req`` (another choice of its n > 1 HTTP request) produced a token within ``timeout_s``;
    if so, ``req``'s deadline moves on to that token plus ``timeout_s``. Found in review: with max_num_seqs below n,
    the choices queued behind their own siblings timed out while the request streamed, and the 504 threw away its
    generated tokens (it said no instance could take the request)."""
    last = max((s.last_token_s for s in req.family if s is not req and s.last_token_s is not None), default=None)
    if last is None or now - last > timeout_s:
        return False
    req.deadline_s = last + timeout_s
    return True


def no_token_message(ctl, w, req) -> str:
    """Why a request sent to worker ``w`` fails with no token for request_timeout_s. A request that has no token
    yet while the worker's latest Stats show requests of its model waiting in the engine's own queue (behind
    max_num_seqs, or for KV room) most likely waited there: say so, with the numbers and the fix (found in review:
    such requests read "produced no token" as if the worker had stalled, while it ran others all along)."""
    message = f"{w!r} produced no token for {ctl.cc.request_timeout_s:g} s"
    if req.first_token_s is not None or w.stats is None:
        return message
    for inst in w.stats.instances:
        if inst.name == req.model and 0 <= inst.running < inst.in_flight:
            seqs = ctl.engine_config.max_num_seqs
            return (f"{message}: the request waited in its engine's queue ({inst.in_flight - inst.running} of "
                    f"{inst.in_flight} requests of {req.model!r} there waiting behind {inst.running} running; "
                    f"max_num_seqs {seqs}, or no KV room). Fix: add workers, raise the engine's max_num_seqs, or "
                    f"raise request_timeout_s")
    return message


def fail_unheld(ex) -> None:
    """Log once (a WARNING) each model no worker admitted so far can hold, with its need, the largest pool and
    the --memory-gib to use, and fail its waiting requests at once with a 503 saying so, instead of after
    request_timeout_s (found in review: a 504 after 120 s, nothing logged). Checked at every tick, so the
    requests of a worker that can hold it, joining later, wait for its instance as any other. Pools of lost
    workers count: a review of the fix found a large remote worker's brief stall (lost, then back within a
    second) failed its model's requests while a smaller worker stayed, where they used to wait for it."""
    from warmserve.controller.errors import NoWorkersError
    from warmserve.controller.launch import unheld  # launch imports the controller, which imports this module

    ctl = ex.ctl
    for name, m in ctl.models.items():
        # a local worker being started again (or replaced) comes back with its pool, which may hold it
        why = None if ctl.restarting or ctl.replacing else unheld(m, ex.pools_seen)
        if why is None:
            ex._unheld.discard(name)
            continue
        message, fields = why
        if name not in ex._unheld:
            ex._unheld.add(name)
            log.warning("%s", message)
        for req in list(ctl.state.queues.get(name, ())):
            ctl.driver.withdraw(name, req, ctl.now_s())
            ex.fail(req, NoWorkersError(message, **fields), ctl.now_s())
