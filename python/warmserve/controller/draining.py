"""A worker that drains: it was sent SIGTERM (a container stop, a pod eviction, an operator's rolling restart) and
says so in its Stats (``Stats.draining``; the worker side is ``WorkerServer.drain``). The controller stops giving it
work at once and lets what runs there finish, instead of taking it for lost when it goes: before drains, a SIGTERM
aborted every request on the worker, and each started over elsewhere after its tokens, a second prefill (and a cold
start where no other instance of its model ran).

From the policy's side the worker's GPU is gone from the moment it drains (``lose_gpus``, with nothing requeued):
nothing is routed or placed there any more, and the policy starts instances elsewhere for the load its instances
served. The worker's own requests stay on ``w.gens`` and stream on; each that ends reports an instance the driver
no longer has, which it ignores. When the worker leaves (its process ends, or it falls silent), the loss handling
runs as for any worker, with nothing left in flight unless its drain ran out of time (those start over elsewhere).
A rank of a tensor-parallel instance does not drain (the worker stops at once, as before): its instance serves on
other workers' GPUs, which the policy would take for free while it ran on."""

from __future__ import annotations

import logging

import zmq

from warmserve.controller.errors import NoWorkersError
from warmserve.controller.pids import exit_status

log = logging.getLogger("warmserve.controller")


def on_drain(ctl, w) -> None:
    """Worker ``w`` said it drains (``WorkerHub`` calls this once, on the first Stats that says so)."""
    w.draining = True
    ctl.metrics.workers_drained.inc()
    log.warning("%r drains (it was sent SIGTERM): no new work goes to it, and its %d request(s) in flight finish "
                "there; the load it served goes to other workers", w, len(w.gens))
    if not w.ready:  # still being admitted: nothing runs there yet, and nothing must be placed there. The loss
        # handling fails what waits when no worker serves or comes, as below.
        ctl.hub.lose(w, "it drains (it was sent SIGTERM) while being admitted")
        return
    now_s = ctl.now_s()
    if w.gpu_id is not None:
        ctl.driver.lose_gpus([w.gpu_id], now_s)
    if not ctl._workers_serve_or_come():  # as the loss of the last worker does: say so now, not at the timeout
        for model in ctl.models:
            ctl.driver.fail_waiting(model, NoWorkersError(
                f"no worker serves: the last one, {w!r}, drains (it was sent SIGTERM) and takes no new work; retry "
                "when workers join", worker_id=w.worker_id), now_s)


def send_failed(w, e: zmq.ZMQError) -> str:
    """Why ``w`` is gone when a send to it failed with ``e`` (``WorkerHub.send``; EHOSTUNREACH: no connection under
    its routing id any more). Of a worker that said it leaves (it drains, or stops at once on SIGTERM) that is its
    going as said: the reason is what is known of its end, a local process's exit status, not a fault's. Found in
    review of the logs: "left after draining: send failed: its connection is gone (process exited, or network
    cut)", where the line of a worker whose exit was seen first reads "process 674 exited with status 0"."""
    if e.errno != zmq.EHOSTUNREACH:
        return f"send failed: {e.strerror}"
    if not (w.draining or (w.stats is not None and w.stats.stopping)):
        return "send failed: its connection is gone (process exited, or network cut)"
    status = exit_status(w.proc)
    if status is not None:
        return f"process {w.pid} exited with status {status} (its connection closed)"
    return "its connection closed" + (", its process still running" if w.proc is not None else "")
