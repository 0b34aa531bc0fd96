"""The counts in the lines of a lost worker and of a shutdown (controller/losses.py), found by mutation testing: a
request that ended already is not in flight, and a shutdown counts the requests it cut. A real Controller,
WorkerRecord and Req; the log lines as an operator reads them."""

from __future__ import annotations

import logging

from warmserve.controller.errors import OverloadedError
from warmserve.controller.losses import fail_at_shutdown, requeue_lost
from warmserve.controller.requests import Req
from warmserve.controller.workers import WorkerRecord
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, make_controller, run

LOGGER = "warmserve.controller"


def _worker() -> WorkerRecord:
    return WorkerRecord(worker_id="host-1-cpu0", ident=b"host-1-cpu0", device="cpu", pid=1, capacity_bytes=1 << 30,
                        page_bytes=2 << 20, host="host-1")


def _req(rid: int) -> Req:
    return Req(rid, MODEL, [1, 2], SamplingParams(max_tokens=4), timeout_s=60.0)


def _lines(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_a_request_that_ended_already_is_not_counted_in_flight_on_the_loss(model, caplog):
    """Of two requests on a lost worker, one answered already: the line counts 1 in flight, which starts over
    (after its token), at INFO (none failed); the one that ended is not started over."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    c = make_controller(model)
    done, live = _req(1), _req(2)
    done.finish("stop")
    live.push([5])
    assert requeue_lost(c, _worker(), "test: silent", {1: done, 2: live}, 0.0, []) == [live]
    assert live.worker is None and not live.done and done.finish_reason == "stop"
    assert done.error is None and done.reroutes == 0  # nor failed: its outcome was counted as it ended
    assert c.metrics.requests.get(model=MODEL, outcome="worker_lost") == 0
    assert _lines(caplog) == [(logging.INFO, "worker host-1-cpu0 (cpu) lost with 1 request(s) in flight: 1 start "
                                             "over elsewhere (1 after tokens already sent)")]


def test_a_shutdown_fails_what_runs_and_says_how_many(model, caplog):
    """fail_at_shutdown fails each request still running on a worker (OverloadedError, outcome "error"), leaves one
    that ended, returns an Abort target for each generation of a remote worker, empties its table, and its line
    counts the cut ones and the queued ones failed before."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        c = make_controller(model)
        await c.start()  # its hub: the table of workers
        w = _worker()
        c.hub.workers[w.ident] = w
        try:
            a, b, ended = _req(1), _req(2), _req(3)
            ended.finish("length")
            w.gens.update({10: a, 11: ended, 12: b})
            caplog.clear()
            assert fail_at_shutdown(c, 3, drained=True) == [(w, 10), (w, 11), (w, 12)]
            assert isinstance(a.error, OverloadedError) and isinstance(b.error, OverloadedError)
            assert ended.error is None and w.gens == {}
            assert c.metrics.requests.get(model=MODEL, outcome="error") == 2
            ((level, line),) = _lines(caplog)
            assert level == logging.WARNING
            assert line.startswith("shutdown: 2 request(s) still running and 3 waiting were failed: the drain's "), \
                line
        finally:
            del c.hub.workers[w.ident]  # no worker behind it: the close sends it nothing
            await c.close(drain=False)

    run(main())
