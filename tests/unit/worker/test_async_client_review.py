"""The asyncio worker client, found in review: its heartbeat task ended for good the first time its send queue was
full (so a dead worker's calls waited out their whole timeout, not the silence limit); close() left calls in flight
waiting out their timeout; and a client dropped without close() was never collected (its tasks held it), its
socket, context and heartbeats living as long as the loop. Against a port nobody serves: no worker answers."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import weakref

import pytest

from warmserve.errors import ClosedError, TimeoutError_, WarmServeError, WorkerLostError
from warmserve.worker.async_client import AsyncWorkerClient

from net_ports import free_port


@pytest.mark.parametrize("hwm", [100_000, 1], ids=["room-in-the-queue", "queue-full"])
def test_a_silent_worker_is_lost_within_the_silence_limit(hwm):
    """hwm=1: nobody listens, so the call itself fills the queue and every heartbeat finds it full."""
    async def main():
        c = AsyncWorkerClient(f"tcp://127.0.0.1:{free_port()}", heartbeat_interval_s=0.05, worker_timeout_s=0.3,
                              hwm=hwm)
        try:
            t0 = time.monotonic()
            with pytest.raises(WorkerLostError):
                await c.stats(timeout_s=4.0)
            assert time.monotonic() - t0 < 2.0
            assert not c._tasks[1].done()  # the heartbeat task beats on
        finally:
            await c.close()
    asyncio.run(main())


def test_close_fails_a_call_in_flight_at_once():
    async def main():
        c = AsyncWorkerClient(f"tcp://127.0.0.1:{free_port()}", heartbeat_interval_s=0.1, worker_timeout_s=30.0)
        call = asyncio.ensure_future(c.stats(timeout_s=8.0))
        await asyncio.sleep(0.3)
        await c.close()
        done, _ = await asyncio.wait({call}, timeout=3.0)
        if not done:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
        assert done, "the call still waited 3 s after close()"
        with pytest.raises(ClosedError):
            call.result()
    asyncio.run(main())


def test_a_dropped_client_is_collected_and_its_tasks_end():
    async def main():
        c = AsyncWorkerClient(f"tcp://127.0.0.1:{free_port()}", heartbeat_interval_s=0.05, worker_timeout_s=30.0)
        with pytest.raises(TimeoutError_):
            await c.stats(timeout_s=0.2)
        ref, tasks, sock = weakref.ref(c), list(c._tasks), c._sock
        del c
        gc.collect()
        await asyncio.sleep(0.3)
        leaked, running = ref() is not None, [t for t in tasks if not t.done()]
        for t in tasks:  # clean up whatever the assertion finds
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ref() is not None:
            await ref().close()
        assert not leaked and not running and sock.closed, (leaked, len(running), sock.closed)
    asyncio.run(main())


# Found in a review of the fixes above: a stream failed by close() reopened the client at its clean-up (an Abort
# through it), and the finalizer, run after the loop had closed, raised before it closed the socket.
def test_a_stream_failed_by_close_does_not_reopen_the_client():
    async def main():
        c = AsyncWorkerClient(f"tcp://127.0.0.1:{free_port()}", heartbeat_interval_s=0.05, worker_timeout_s=0.5,
                              default_timeout_s=2.0)
        stream = await c.generate("m", [1, 2, 3])
        got = []

        async def consume():
            try:
                async with stream:
                    async for _ in stream:
                        pass
            except WarmServeError as e:
                got.append(e)

        t = asyncio.ensure_future(consume())
        await asyncio.sleep(0.1)
        await c.close()
        await asyncio.wait({t}, timeout=5.0)
        reopened = c._sock is not None or bool(c._tasks)
        await c.close()
        assert not reopened, f"the closed client was reopened by its stream's clean-up; the caller got {got!r}"
        assert got and isinstance(got[0], ClosedError), got
    asyncio.run(main())


def test_a_client_collected_after_its_loop_closed_closes_its_socket():
    loop = asyncio.new_event_loop()
    c = AsyncWorkerClient(f"tcp://127.0.0.1:{free_port()}", heartbeat_interval_s=0.05)
    loop.run_until_complete(c._ensure())
    loop.run_until_complete(asyncio.sleep(0.1))
    sock, ctx = c._sock, c._ctx
    loop.close()  # as a test framework or a hand-run loop does, pending tasks left
    errs = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: errs.append(u.exc_value)
    try:
        del c
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    try:
        assert sock.closed and ctx.closed, (sock.closed, ctx.closed, errs)
    finally:
        if not sock.closed:
            sock.close(linger=0)
        if not ctx.closed:
            ctx.term()


def test_close_after_the_loop_closed_via_finalizer_at_exit_path():
    """The same through the finalizer called directly (what atexit does for a client alive at exit)."""
    loop = asyncio.new_event_loop()
    c = AsyncWorkerClient(f"tcp://127.0.0.1:{free_port()}", heartbeat_interval_s=0.05)
    loop.run_until_complete(c._ensure())
    sock, ctx = c._sock, c._ctx
    loop.close()
    try:
        c._finalizer()
    except RuntimeError:
        pass
    try:
        assert sock.closed and ctx.closed, (sock.closed, ctx.closed)
    finally:
        if not sock.closed:
            sock.close(linger=0)
        if not ctx.closed:
            ctx.term()
