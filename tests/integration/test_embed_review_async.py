"""A `warmserve.Cluster` started and closed from asyncio code, as a FastAPI or aiohttp app's startup and shutdown
do: `await Cluster.astart(...)`, `async with`, `await c.aclose()` leave the caller's event loop running. Found in
review: `Cluster()` in a coroutine stalled that loop 2.4 s (the demo model, one CPU worker) and `close()` 5.2 s
(the drain of one 400-token generation), and there was no async flavour of either."""

import asyncio
import os
import threading
import time

import pytest

import warmserve
from warmserve.errors import ClosedError

import serving

MODEL = "llama-20m"
KW = dict(cpu_workers=1, cpu_worker_memory_bytes=512 << 20, start_timeout_s=120)


class Ticker:
    """Counts the turns of the running loop and the longest gap between two."""

    def __init__(self):
        self.turns, self.longest_s = 0, 0.0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.turns, self.longest_s = self.turns + 1, max(self.longest_s, now - last)
            last = now

    def reset(self):
        self.turns, self.longest_s = 0, 0.0


def _workers_of_this_process() -> list[int]:
    """The worker processes this process's clusters started (their worker ids name the controller's pid)."""
    tag = f"vm-{os.getpid()}w"
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if tag in f.read().decode(errors="replace"):
                        found.append(int(d))
            except OSError:
                pass
    return found


def test_astart_and_async_with_leave_the_callers_event_loop_running():
    path = serving.demo_paths((MODEL,))[MODEL]

    async def main():
        ticker = Ticker()
        await asyncio.sleep(0.05)
        ticker.reset()
        began = time.monotonic()
        async with await warmserve.Cluster.astart([path], **KW) as c:
            start_s, start_turns, start_gap_s = time.monotonic() - began, ticker.turns, ticker.longest_s
            assert (await c.agenerate(MODEL, "Hi", max_tokens=3, temperature=0)).completion_tokens == 3
            # 120 tokens: a drain long enough for the ticker (0.3 s or more here), short enough to end within the
            # 30 s drain_timeout_s on a loaded CI machine (a full run saw 400 tokens take longer than that)
            long = asyncio.ensure_future(c.agenerate(MODEL, [5, 17, 300], params=warmserve.SamplingParams(
                max_tokens=120, temperature=0.0, ignore_eos=True)))
            await asyncio.sleep(0.3)
            ticker.reset()
            began = time.monotonic()
        close_s, close_turns, close_gap_s = time.monotonic() - began, ticker.turns, ticker.longest_s
        done = await long
        return start_s, start_turns, start_gap_s, close_s, close_turns, close_gap_s, done, c

    start_s, start_turns, start_gap_s, close_s, close_turns, close_gap_s, done, c = asyncio.run(main())
    # the loop turned on through the start and the drain (before: not once; each was one gap as long as itself)
    assert start_turns >= 10 and start_gap_s < max(0.5 * start_s, 0.2), (start_s, start_turns, start_gap_s)
    assert close_turns >= 10 and close_gap_s < max(0.5 * close_s, 0.2), (close_s, close_turns, close_gap_s)
    assert done.completion_tokens == 120 and done.finish_reason == "length"  # drained, not failed
    with pytest.raises(ClosedError):
        c.generate(MODEL, "Hi", max_tokens=1)
    assert not _workers_of_this_process()


def test_a_cancelled_astart_stops_the_start_and_its_workers():
    """The start waits for a remote worker that never comes (for start_timeout_s, 120 s): cancelled once its
    local worker runs, it is stopped at once, that worker with it, and the thread that ran it ends."""
    path = serving.demo_paths((MODEL,))[MODEL]

    async def main():
        task = asyncio.ensure_future(warmserve.Cluster.astart([path], remote_workers=1, **KW))
        end = time.monotonic() + 60
        while not _workers_of_this_process() and time.monotonic() < end and not task.done():
            await asyncio.sleep(0.1)
        assert _workers_of_this_process() and not task.done(), "the start's local worker never came"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    began = time.monotonic()
    while (_workers_of_this_process() or _start_threads()) and time.monotonic() < began + 20:
        time.sleep(0.1)
    assert not _workers_of_this_process(), "a cancelled astart left its workers running"
    assert not _start_threads(), "a cancelled astart went on waiting for its remote worker"


def _start_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "warmserve-start"]
