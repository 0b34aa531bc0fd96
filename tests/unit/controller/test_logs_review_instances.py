"""The controller's log lines for an instance's life, read as an operator reads them (the review of the logs,
2026-12-06): a start that loaded its own weights says how many bytes in how long (not "cold load": the worker may
have read them from its host checkpoint cache), a stop by the policy leaves a line, and a lost worker's line says
what became of the requests it ran. Scripted peers on real ZeroMQ sockets (controller_harness.TablePeer)."""

import logging
from types import SimpleNamespace

from warmserve.controller.losses import requeue_lost
from warmserve.policy import actions as A

from controller_harness import MODEL, TablePeer, make_controller, run, until

LOGGER = "warmserve.controller"


def _lines(caplog, level=logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def _on_one_worker(model, load_s: float, body) -> None:
    """Run ``await body(controller)`` on a controller with one scripted worker whose loads take ``load_s``."""
    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = TablePeer(ep, "host-1-cpu0", load_s=load_s)
        try:
            assert await until(lambda: any(w.ready for w in c.gpu_workers), 5)
            await body(c)
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())


def _ready_line(caplog, iid: str) -> str:
    ready = [m for m in _lines(caplog) if m.startswith(f"instance {iid} ") and " ready on " in m]
    assert len(ready) == 1, _lines(caplog)
    return ready[0]


def test_a_start_and_a_stop_by_the_policy_are_logged(model, caplog):
    """Before: the ready line said "(cold load)" whatever the worker read the weights from, with no bytes or
    seconds, and a stop (a scale-in) wrote no line at any level."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def body(c):
        c.driver.apply(A.StartInstance("i-1", MODEL, (0,)), c.now_s())
        assert await until(lambda: "i-1" in c.state.instances and c.state.instances["i-1"].ready, 5)
        ready = _ready_line(caplog, "i-1")
        assert "(prewarm miss: loaded 0.0 MiB in 0.30 s)" in ready and "cold load" not in ready, ready
        c.driver.apply(A.StopInstance("i-1"), c.now_s())  # nothing in flight: it stops at once
        stopped = [m for m in _lines(caplog) if m.startswith("instance i-1 ") and " stopped " in m]
        assert len(stopped) == 1, _lines(caplog)
        assert MODEL in stopped[0] and "host-1-cpu0" in stopped[0] and "by the policy" in stopped[0], stopped

    _on_one_worker(model, 0.3, body)


def test_a_start_from_a_prewarm_still_loading_is_not_called_a_hit(model, caplog):
    """As the metrics count it (``prewarm_loading_starts``, neither a hit nor a miss). Before: "prewarm hit"."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def body(c):
        c.driver.apply(A.Prewarm("p-1", MODEL, (0,), 1.0), c.now_s())
        c.driver.apply(A.StartInstance("i-2", MODEL, (0,), prewarm_id="p-1"), c.now_s())  # its load runs
        assert await until(lambda: "i-2" in c.state.instances and c.state.instances["i-2"].ready, 5)
        assert "(from a prewarm still loading)" in _ready_line(caplog, "i-2")
        assert c.metrics.prewarm_loading_starts.get(model=MODEL) == 1

    _on_one_worker(model, 0.5, body)


class _Req:
    def __init__(self, rid: int, generated: int, reroutes: int = 0):
        self.rid, self.generated, self.reroutes, self.done = rid, generated, reroutes, False
        self.model, self.instance_id = MODEL, "i-1"

    def requeued(self, timeout_s: float) -> None:
        pass

    def fail(self, error) -> None:
        self.done = True


def _ctl(max_losses: int = 2):
    counter = SimpleNamespace(inc=lambda **k: None)
    return SimpleNamespace(cc=SimpleNamespace(max_worker_losses_per_request=max_losses, request_timeout_s=60.0),
                           metrics=SimpleNamespace(rerouted=counter, resumed=counter),
                           driver=SimpleNamespace(request_finished=lambda *a, **k: None),
                           _request_done=lambda req, outcome: None)


def test_a_lost_workers_line_says_what_became_of_its_requests(caplog):
    """Before: "worker W lost: WHY" alone; the requests it ran started over (or failed) with no line saying so."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    w = SimpleNamespace(left_by_plan=False, worker_id="host-1-cpu0")
    gens = {1: _Req(1, 0), 2: _Req(2, 5), 3: _Req(3, 7, reroutes=1)}
    requeue = requeue_lost(_ctl(), w, "silent for 2.1 s", gens, 0.0, [])
    assert [r.rid for r in requeue] == [1, 2]
    lines = [r for r in caplog.records if r.name == LOGGER and "request(s) in flight" in r.getMessage()]
    assert len(lines) == 1, _lines(caplog)
    msg = lines[0].getMessage()
    assert " lost with 3 request(s) in flight: 2 start over elsewhere (1 after tokens already sent)" in msg, msg
    assert "1 failed" in msg and "max_worker_losses_per_request" in msg, msg
    assert lines[0].levelno == logging.WARNING  # a request failed: the operator may retry it or raise the limit
    caplog.clear()
    requeue_lost(_ctl(), SimpleNamespace(left_by_plan=True, worker_id="host-1-cpu0"), "drained", {4: _Req(4, 2)}, 0.0,
                 ["m/i3"])
    msg = [r for r in caplog.records if r.name == LOGGER and "request(s) in flight" in r.getMessage()]
    assert len(msg) == 1 and msg[0].levelno == logging.INFO, _lines(caplog)
    assert " left with instance(s) m/i3 and 1 request(s) in flight: 1 start over elsewhere (1 after tokens already " \
        "sent)" in \
        msg[0].getMessage()


def test_a_lost_workers_line_names_the_instances_that_went_with_it(model, caplog):
    """Found in review of the logs: a loss's line did not name the instances that went with the worker (their
    replacements showed only as new "ready" lines), and a loss with nothing in flight said nothing of them."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def body(c):
        c.driver.apply(A.StartInstance("i-1", MODEL, (0,)), c.now_s())
        assert await until(lambda: "i-1" in c.state.instances and c.state.instances["i-1"].ready, 5)
        caplog.clear()
        c.hub.lose(c.gpu_workers[0], "test: its heartbeat stopped")
        lines = [m for m in _lines(caplog) if " lost with " in m]
        assert lines == ["worker host-1-cpu0 (cpu) lost with instance(s) i-1 and no request in flight"], _lines(caplog)

    _on_one_worker(model, 0.0, body)
