"""controller/loopgate.py on a real event loop and threads: work handed to the loop either runs or ends in
ClosedError, at every point of a stop (tests/integration/test_cluster_close_race.py has the Cluster's race)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import time
import warnings

import pytest

from warmserve.controller.loopgate import LoopGate
from warmserve.errors import ClosedError

#: Bound on every wait here: a stranded call would otherwise hang the test.
WAIT_S = 10.0


def _gate() -> LoopGate:
    return LoopGate(asyncio.new_event_loop(), "test-loopgate")


def _block_loop(gate: LoopGate) -> threading.Event:
    """Hold the loop's thread in a callback until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def hold():
        entered.set()
        release.wait(WAIT_S)

    gate.loop.call_soon_threadsafe(hold)
    assert entered.wait(WAIT_S)
    return release


def _stop_in_thread(gate: LoopGate) -> threading.Thread:
    t = threading.Thread(target=gate.stop_loop, daemon=True)
    t.start()
    deadline = time.monotonic() + WAIT_S
    while gate.open:  # the gate shuts before the stop is queued
        assert time.monotonic() < deadline
        time.sleep(0.001)
    return t


def test_a_result_comes_back_and_a_caller_cancel_stops_the_work():
    gate = _gate()
    try:
        async def add(a, b):
            return a + b

        assert gate.submit(add(2, 3)).result(WAIT_S) == 5
        ended = threading.Event()

        async def forever():
            try:
                await asyncio.Event().wait()
            finally:
                ended.set()

        fut = gate.submit(forever())
        time.sleep(0.05)
        assert fut.cancel() and ended.wait(WAIT_S)
    finally:
        gate.stop_loop()
    assert gate.loop.is_closed()


def test_work_still_pending_at_the_stop_ends_in_closed_error_after_its_clean_up():
    gate = _gate()
    ended = threading.Event()

    async def forever():
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    fut = gate.submit(forever())
    time.sleep(0.05)
    gate.stop_loop()
    with pytest.raises(ClosedError):
        fut.result(WAIT_S)
    assert ended.is_set() and gate.loop.is_closed() and gate.stopped.is_set()


def test_a_call_made_while_the_loop_stops_fails_fast_and_is_never_started():
    """The window of the review's hang: the gate has shut and the stop is queued, the loop's thread has not ended."""
    gate = _gate()
    release = _block_loop(gate)
    started = []

    async def work():
        started.append(1)

    queued = gate.submit(work())  # before the stop: its start waits behind the blocked callback
    stopper = _stop_in_thread(gate)
    with pytest.raises(ClosedError):
        gate.submit(work())  # after the gate shut: at once
    release.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine left unawaited would warn when collected
        with pytest.raises(ClosedError):
            queued.result(WAIT_S)
        gc.collect()
    assert not started and gate.loop.is_closed()


def test_concurrent_futures_wait_sees_the_closed_error():
    gate = _gate()
    fut = gate.submit(asyncio.sleep(3600))
    time.sleep(0.05)
    t0 = time.monotonic()
    gate.stop_loop()
    done, _ = concurrent.futures.wait((fut,), WAIT_S)
    assert done and isinstance(fut.exception(), ClosedError) and time.monotonic() - t0 < WAIT_S / 2
