"""Found in review: work its caller cancelled before the loop had started it (a tiny timeout_s, a Ctrl-C while the
loop is busy for a moment) is closed unrun by the gate, and its caller waited for a flag its coroutine's ``finally``
was to set: generate(timeout_s=0.1) took Cluster's CANCEL_WAIT_S (30 s). Also the worker start's timeout message,
which rounded 0.5 s to "within 0 s"."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest

from controller_harness import make_controller, run
from test_loopgate import WAIT_S, _block_loop
from warmserve.controller.loopgate import LoopGate
from warmserve.errors import TimeoutError_


def test_work_cancelled_before_the_loop_started_it_is_ended_at_once():
    gate = LoopGate(asyncio.new_event_loop(), "test-loopgate-unstarted")
    ran = threading.Event()
    try:
        release = _block_loop(gate)

        async def work():
            ran.set()

        ended = threading.Event()
        fut = gate.submit(work(), ended=ended)
        assert fut.cancel()
        # Told at once, the loop still busy: the gate's start will find it cancelled and close it unrun.
        assert ended.is_set()
        release.set()
        assert gate.submit(asyncio.sleep(0, "after")).result(WAIT_S) == "after"  # the loop went past start
        assert not ran.is_set()
    finally:
        gate.stop_loop()


def test_ended_is_set_when_started_work_ends_however_it_ends():
    gate = LoopGate(asyncio.new_event_loop(), "test-loopgate-ended")
    try:
        ended = threading.Event()
        assert gate.submit(asyncio.sleep(0, 7), ended=ended).result(WAIT_S) == 7
        assert ended.wait(WAIT_S)

        entered, cleaned = threading.Event(), threading.Event()

        async def forever():
            entered.set()
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0.2)  # its clean-up takes a while: ended waits for it
                cleaned.set()

        ended = threading.Event()
        fut = gate.submit(forever(), ended=ended)
        assert entered.wait(WAIT_S)
        assert fut.cancel()
        assert not ended.is_set()  # started: its clean-up is still to run
        assert ended.wait(WAIT_S) and cleaned.is_set()

        # Cancelled once its task exists but before that task's first step: no finally of it ever runs.
        release = _block_loop(gate)
        ended = threading.Event()
        fut = gate.submit(forever(), ended=ended)
        gate.loop.call_soon_threadsafe(fut.cancel)  # on the loop, right after start has made the task
        release.set()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result(WAIT_S)
        assert ended.wait(WAIT_S)
    finally:
        gate.stop_loop()


def test_a_closed_gate_sets_ended_with_its_closed_error():
    gate = LoopGate(asyncio.new_event_loop(), "test-loopgate-closed")
    gate.stop_loop()
    ended = threading.Event()
    with pytest.raises(Exception, match="closed"):
        gate.submit(asyncio.sleep(0), ended=ended)
    assert ended.is_set()


def test_cancel_races_with_start_and_never_strands_the_caller():
    """Cancels at every point around start, on a loop that keeps handing the thread back and forth: whichever
    comes first, ended is set within the bound, and promptly when the work never started."""
    gate = LoopGate(asyncio.new_event_loop(), "test-loopgate-race")
    try:
        async def short():
            await asyncio.sleep(0.001)

        for i in range(300):
            ended = threading.Event()
            fut = gate.submit(short(), ended=ended)
            if i % 3:
                time.sleep(0.0001 * (i % 7))
            fut.cancel()
            assert ended.wait(WAIT_S), f"round {i}: ended never set"
    finally:
        gate.stop_loop()


def test_the_worker_start_timeout_names_a_fraction_of_a_second(model):
    async def main():
        c = make_controller(model)
        await c.start()
        try:
            with pytest.raises(TimeoutError_, match=r"0 of 1 workers registered within 0\.5 s"):
                await c.wait_for_workers(1, 0.5)
        finally:
            await c.close(drain=False)

    run(main())
