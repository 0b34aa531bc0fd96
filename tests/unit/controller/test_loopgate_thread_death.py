"""``LoopGate``: work pending when the loop's thread dies without ``stop_loop`` (a callback raised SystemExit) fails
with ClosedError at once. Found in review: only later submits were refused; what was pending waited until someone
called stop_loop, or for ever."""
import asyncio
import concurrent.futures
import sys
import threading

import pytest

from warmserve.controller.loopgate import LoopGate
from warmserve.errors import ClosedError


def test_pending_work_fails_when_the_loop_thread_dies():
    loop = asyncio.new_event_loop()
    gate = LoopGate(loop, "gate-test")
    old_hook = threading.excepthook
    threading.excepthook = lambda args: None  # the thread's SystemExit is the point of the test
    try:
        pending = asyncio.sleep(30)
        fut = gate.submit(pending)
        loop.call_soon_threadsafe(sys.exit)
        gate.thread.join(5)
        assert not gate.thread.is_alive()
        with pytest.raises(ClosedError):  # later submits are refused (their coroutine closed)...
            gate.submit(asyncio.sleep(0))
        try:
            fut.result(timeout=2)  # ...and what was pending fails too
        except concurrent.futures.TimeoutError:
            pytest.fail("a call pending when the loop's thread died was never failed (waited 2 s)")
        except ClosedError:
            pass
    finally:
        pending.close()  # never started (the loop died first): not to warn "never awaited" in a later test
        threading.excepthook = old_hook
        if not loop.is_closed():
            loop.close()
