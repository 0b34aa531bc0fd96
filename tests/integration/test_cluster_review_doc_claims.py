"""What `warmserve.Cluster`'s docstrings and README.md's Python section say, against what a real Cluster does: a
stream read one piece at a time (found in review: the README calls stream() an async iterator and the class is a
TextIterator, yet next() and anext() raised TypeError), a stream left or a generation cancelled is aborted on its
worker, generate()'s defaults, stats()' keys."""

import asyncio
import gc
import json
import threading
import time

import pytest

import warmserve
from warmserve.controller import cluster as cluster_module
from warmserve.errors import UnknownModelError

import serving

MODEL = "llama-20m"
PROMPT = [5, 17, 300]
#: Runs far past any test's wait unless aborted.
LONG = warmserve.SamplingParams(max_tokens=1500, temperature=0.0, ignore_eos=True)

cluster = serving.cluster_fixture(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20)


def _idle(c, timeout_s: float = 10.0) -> bool:
    """Whether nothing runs or waits on the cluster within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = c.stats()
        if all(i["in_flight"] == 0 for i in st["instances"]) and not any(st["queued"].values()):
            return True
        time.sleep(0.05)
    return False


def test_a_stream_is_read_with_next_and_anext_as_with_for(cluster):
    whole = cluster.generate(MODEL, PROMPT, max_tokens=6, temperature=0)
    s = cluster.stream(MODEL, PROMPT, max_tokens=6, temperature=0)
    assert s.finish_reason is None
    pieces = [next(s)]
    pieces += list(s)  # the rest, as a for-loop reads it
    assert "".join(pieces) == whole.text and all(isinstance(p, str) and p for p in pieces)
    assert s.finish_reason == whole.finish_reason == "length"
    with pytest.raises(StopIteration):
        next(s)

    async def read():
        a = cluster.stream(MODEL, PROMPT, max_tokens=6, temperature=0)
        first = await anext(a)
        return first + "".join([p async for p in a])

    assert asyncio.run(read()) == whole.text


def test_a_stream_left_or_a_generation_cancelled_is_aborted_on_its_worker(cluster):
    """"Breaking out aborts it" (TextIterator), each way a reader can leave; and agenerate() cancelled by
    asyncio.wait_for, as vLLM's generate() is."""
    s = cluster.stream(MODEL, PROMPT, params=LONG)
    for _ in s:
        break
    assert _idle(cluster) and s.finish_reason == "abort"

    async def leave():
        a = cluster.stream(MODEL, PROMPT, params=LONG)
        async for _ in a:
            break
        return a

    left = asyncio.run(leave())
    assert _idle(cluster) and left.finish_reason == "abort"
    s = cluster.stream(MODEL, PROMPT, params=LONG)
    next(s)
    del s  # read with next() and dropped unfinished
    gc.collect()
    assert _idle(cluster)

    async def cancel():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cluster.agenerate(MODEL, PROMPT, params=LONG), 0.5)

    asyncio.run(cancel())
    assert _idle(cluster)


def test_generate_defaults_and_stats_are_as_documented(cluster):
    """generate(): max_tokens 16 and temperature 1 (the demo checkpoint has no generation_config.json) where the
    keywords are left out; params=SamplingParams() is taken as it is (temperature 0: greedy). stats(): plain data
    (JSON) with the README's keys."""
    out = cluster.generate(MODEL, PROMPT)
    assert isinstance(out, warmserve.Completion) and isinstance(out.token_ids, list)
    assert out.completion_tokens == len(out.token_ids) <= 16 and out.prompt_tokens == len(PROMPT)
    assert out.finish_reason in ("stop", "length") and (out.finish_reason == "stop") == (out.completion_tokens < 16)
    drawn = {tuple(cluster.generate(MODEL, PROMPT, max_tokens=8).token_ids) for _ in range(4)}
    assert len(drawn) > 1, "left out, the temperature is 1, not greedy"
    seeded = [cluster.generate(MODEL, PROMPT, max_tokens=8, seed=7).token_ids for _ in range(2)]
    assert seeded[0] == seeded[1]
    greedy = cluster.generate(MODEL, PROMPT, max_tokens=8, temperature=0).token_ids
    assert cluster.generate(MODEL, PROMPT, params=warmserve.SamplingParams(max_tokens=8)).token_ids == greedy
    st = json.loads(json.dumps(cluster.stats()))
    assert {"workers", "instances", "prewarms", "queued", "prewarm_hits", "prewarm_misses"} <= set(st)
    assert {"pool", "models", "host_cache"} <= set(st["workers"][0])


def test_astream_prepares_the_prompt_off_the_callers_loop_and_reads_as_stream(cluster, monkeypatch):
    """Found in review: stream() tokenises where it is called, so from asyncio code a long prompt stalled the
    caller's event loop. astream() prepares it on a worker thread (as agenerate() does: the real ``prepare``,
    its thread recorded), raises the same errors when awaited, and its pieces are stream()'s."""
    threads = []
    real = cluster_module.prepare

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(cluster_module, "prepare", recorded)

    async def read():
        it = await cluster.astream(MODEL, "a text prompt, tokenised off the loop", max_tokens=6, temperature=0)
        pieces = [p async for p in it]
        with pytest.raises(UnknownModelError, match="nope"):
            await cluster.astream("nope", "hi")
        return pieces, it.finish_reason, threading.current_thread()

    pieces, finish, loop_thread = asyncio.run(read())
    assert threads and all(t is not loop_thread for t in threads), threads
    whole = cluster.generate(MODEL, "a text prompt, tokenised off the loop", max_tokens=6, temperature=0)
    assert "".join(pieces) == whole.text and finish == whole.finish_reason == "length"
