"""A failure that recurs at every round of a loop (the controller's policy tick and heartbeats, a worker's engine
tick) is logged once with its trace, then once a minute with a count (warmserve.log_repeats), not at every round:
the review of the logs (2026-12-06) found a trace per round, twice a second on the controller and thousands a
second on a busy worker, for as long as the failure held."""

import asyncio
import logging

from warmserve.log_repeats import RepeatedFailure

from controller_harness import Peer, in_process_worker, make_controller, run, until


def _failures(caplog, logger: str, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.getMessage().startswith(message)]


def test_a_policy_tick_that_fails_every_round_logs_one_trace(model, caplog):
    """Before: one ERROR with its trace per tick (about 20 here in 1 s at a 0.05 s tick)."""
    caplog.set_level(logging.INFO, logger="warmserve.controller")

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep, "host-1-cpu0")
        try:
            assert await until(lambda: any(w.ready for w in c.gpu_workers), 5)
            c.policy_running = True

            def broken(now_s):
                raise RuntimeError("a policy bug")

            c.driver.tick = broken
            await asyncio.sleep(1.0)
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())
    failed = _failures(caplog, "warmserve.controller", "policy tick failed")
    assert len(failed) == 1, len(failed)
    assert failed[0].exc_info is not None and "a policy bug" in str(failed[0].exc_info[1])


def test_a_worker_tick_that_fails_every_round_logs_one_trace(caplog):
    """Before: a trace at every round of the worker's loop."""
    caplog.set_level(logging.INFO, logger="warmserve.worker")
    with in_process_worker("tcp://127.0.0.1:1", 64 << 20) as core:
        def broken():
            raise RuntimeError("an engine bug")

        core.tick = broken
        assert asyncio.run(until(lambda: _failures(caplog, "warmserve.worker", "worker tick failed"), 5))
        asyncio.run(asyncio.sleep(0.5))
    assert len(_failures(caplog, "warmserve.worker", "worker tick failed")) == 1


def test_the_same_failure_is_counted_and_a_new_one_logged_with_its_trace(caplog):
    log = logging.getLogger("warmserve.test_repeats")
    caplog.set_level(logging.INFO, logger=log.name)
    f = RepeatedFailure(log, "policy tick", every_s=0.0)
    for exc in (KeyError("g1"), KeyError("g1"), KeyError("g1"), ValueError("other")):
        f.failed(exc)
    lines = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines[0] == ("policy tick failed", True)
    assert lines[1][0].startswith("policy tick failed again, 1 times in the last ") and not lines[1][1], lines
    assert "KeyError: 'g1'" in lines[1][0] and "report it" in lines[1][0], lines
    assert lines[3] == ("policy tick failed", True) and len(lines) == 4, lines
