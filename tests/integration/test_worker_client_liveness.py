"""The clients' view of a worker's liveness: silence counts only while a client listens (sync), and a generation
failed by the worker's silence is aborted once the worker is heard again (async)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from serving import write_slow_tiny_llama
from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import AsyncWorkerClient, WorkerClient, spawn_local_worker

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return write_slow_tiny_llama(str(tmp_path_factory.mktemp("models")), MODEL)


def _paused(pid: int, for_s: float) -> threading.Timer:
    """SIGSTOP the worker now and SIGCONT it after for_s (cancel the timer and SIGCONT to end it early)."""
    os.kill(pid, signal.SIGSTOP)
    t = threading.Timer(for_s, os.kill, (pid, signal.SIGCONT))
    t.start()
    return t


def test_an_idle_client_measures_the_workers_silence_from_its_call(tmp_path):
    # Heartbeats every minute: the worker is heard only when it answers, as one with a long --heartbeat-interval-s.
    proc, endpoint = spawn_local_worker("cpu", memory_gib=0.1, threads=1, heartbeat_interval_s=60.0,
                                        log_path=str(tmp_path / "worker.log"))
    try:
        c = WorkerClient(endpoint, heartbeat_interval_s=0.25, worker_timeout_s=2.0)
        time.sleep(2.5)  # idle past worker_timeout_s: nothing was heard meanwhile, nor listened for
        timer = _paused(proc.pid, 1.0)  # the answer comes after a second
        try:
            t0 = time.monotonic()
            st = c.stats(timeout_s=10)
            assert st.pid == proc.pid and time.monotonic() - t0 >= 0.9
        finally:
            timer.cancel()
            os.kill(proc.pid, signal.SIGCONT)
        c.shutdown(timeout_s=10)
        c.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_async_stream_failed_by_the_workers_silence_is_aborted_when_it_is_heard_again(model, tmp_path):
    proc, endpoint = spawn_local_worker("cpu", memory_gib=0.2, threads=1, log_path=str(tmp_path / "worker.log"))
    try:
        asyncio.run(asyncio.wait_for(_stalled_stream(proc, endpoint, model), 90))
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


async def _stalled_stream(proc, endpoint: str, model: str) -> None:
    async with AsyncWorkerClient(endpoint, heartbeat_interval_s=0.2, worker_timeout_s=1.0) as c:
        await c.prewarm(model)
        await c.activate(MODEL)
        s = await c.generate(MODEL, [1, 2, 3], P.SamplingParams(max_tokens=1500, ignore_eos=True))
        it = s.__aiter__()
        await it.__anext__()
        timer = _paused(proc.pid, 2.0)
        try:
            with pytest.raises(errors.WorkerLostError, match="silent for"):
                while True:
                    ev = await it.__anext__()
                    assert not ev.finished
        finally:
            await asyncio.to_thread(timer.join)
        # The next call aborts the generation, which would otherwise run on to max_tokens (a call made before the
        # worker is heard again fails, its Abort sent all the same).
        deadline = time.monotonic() + 5
        while True:
            try:
                st = await c.stats()
            except errors.WorkerLostError:
                st = None
            if st is not None and st.in_flight == 0:
                break
            assert time.monotonic() < deadline, f"still running on the worker: {st and st.instances}"
            await asyncio.sleep(0.2)
        assert st.instances[0].kv.kv_blocks_used == 0
        await c.shutdown(timeout_s=10)
