"""Faults of `warmserve.Cluster` found in review, on real worker processes:

- a generate whose timeout ran out before the controller's loop had started its work waited CANCEL_WAIT_S (30 s);
- a stream its reader left (break) while close() drained was not aborted: the close waited for it;
- two Clusters in one process gave their workers one id, and with one log_dir one log file;
- a model named by an unhashable value (a list, a dict) was a bare TypeError."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from warmserve import Cluster, SamplingParams
from warmserve.errors import TimeoutError_, UnknownModelError

import serving

MODEL = "llama-20m"


@pytest.fixture(scope="module")
def cluster():
    with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20) as c:
        yield c


def test_a_timeout_that_runs_out_before_the_work_starts_raises_at_once(cluster):
    c = cluster
    for _ in range(3):
        c._loop.call_soon_threadsafe(time.sleep, 0.3)  # the loop busy for a moment (a slow tick, a burst of work)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError_, match=r"within 0\.1 s"):
            c.generate(MODEL, "Hi", max_tokens=4, timeout_s=0.1)
        took_s = time.monotonic() - t0
        assert took_s < 5, f"the timeout of 0.1 s took {took_s:.1f} s (before: CANCEL_WAIT_S, 30 s)"
    assert c.generate(MODEL, "Hi", max_tokens=2, temperature=0).completion_tokens == 2  # the cluster serves on


@pytest.mark.parametrize("model", [["llama-20m"], {"a": 1}, ("x", [1])])
def test_an_unhashable_model_argument_is_an_unknown_model_error(cluster, model):
    c = cluster
    with pytest.raises(UnknownModelError, match="model must be the name of a served model") as e:
        c.generate(model, "Hi", max_tokens=2)
    assert e.value.param == "model" and MODEL in str(e.value)
    with pytest.raises(UnknownModelError):
        c.stream(model, "Hi", max_tokens=2)
    with pytest.raises(UnknownModelError):
        asyncio.run(c.agenerate(model, "Hi", max_tokens=2))


def test_streams_their_readers_leave_while_close_drains_are_aborted():
    """A sync reader and an async one each break out after close() has begun draining; the close must not wait
    for their generations (max_tokens 1500, unread) to run on to the drain's 30 s timeout."""
    params = SamplingParams(max_tokens=1500, temperature=0.0, ignore_eos=True)
    closing = threading.Event()
    left: dict[str, float] = {}
    streams = {}
    errors: list[BaseException] = []

    def sync_reader(c):
        s = streams["sync"] = c.stream(MODEL, [5, 9], params=params)
        n = 0
        for _ in s:
            n += 1
            if closing.is_set() and n > 3:
                break
        left["sync"] = time.monotonic()

    def async_reader(c):
        async def read():
            s = streams["async"] = c.stream(MODEL, [7, 11], params=params)
            n = 0
            async for _ in s:
                n += 1
                if closing.is_set() and n > 3:
                    break
            left["async"] = time.monotonic()

        asyncio.run(read())

    def guarded(fn, c):
        try:
            fn(c)
        except BaseException as e:  # reaches the test's thread through `errors`
            errors.append(e)

    c = serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20)
    with c as cl:
        readers = [threading.Thread(target=guarded, args=(fn, cl), daemon=True) for fn in (sync_reader, async_reader)]
        for t in readers:
            t.start()
        deadline = time.monotonic() + 60
        while len(streams) < 2 or any(s._gen is None for s in streams.values()):  # both requests submitted
            assert time.monotonic() < deadline, "the streams never started"
            time.sleep(0.05)
        time.sleep(0.5)
        closing.set()
        t0 = time.monotonic()
        cl.close()
        closed_after_s = time.monotonic() - t0
        for t in readers:
            t.join(30)
    assert not errors, errors
    assert set(left) == {"sync", "async"}, left
    assert closed_after_s < 15, f"close() took {closed_after_s:.1f} s: it waited for streams nobody reads"
    assert streams["sync"].finish_reason == "abort" and streams["async"].finish_reason == "abort", \
        {k: s.finish_reason for k, s in streams.items()}


def test_two_clusters_in_one_process_give_their_workers_ids_and_logs_of_their_own(tmp_path):
    paths = serving.demo_paths((MODEL,))
    log_dir = str(tmp_path / "logs")
    a = Cluster(paths[MODEL], cpu_workers=1, cpu_worker_memory_bytes=512 << 20, log_dir=log_dir)
    try:
        b = Cluster(paths[MODEL], cpu_workers=1, cpu_worker_memory_bytes=512 << 20, log_dir=log_dir)
        try:
            ids_a = [w["worker_id"] for w in a.stats()["workers"]]
            ids_b = [w["worker_id"] for w in b.stats()["workers"]]
        finally:
            b.close()
    finally:
        a.close()
    assert len(ids_a) == len(ids_b) == 1 and not set(ids_a) & set(ids_b), (ids_a, ids_b)
    assert sorted(os.listdir(log_dir)) == sorted(f"{w}.log" for w in ids_a + ids_b)
    for name in os.listdir(log_dir):
        with open(os.path.join(log_dir, name)) as f:
            assert f.read().count("warmserve worker ") == 1, f"{name} has the start of more than one worker"
