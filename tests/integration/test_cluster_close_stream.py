"""`Cluster.close()` lets running requests finish: a stream read on after the close still gets all of its text."""

import asyncio
import time

import pytest

import warmserve
from warmserve import SamplingParams
from warmserve.controller.errors import OverloadedError

import serving

MODEL = "llama-20m"
PROMPT = [5, 17, 300]


def test_streams_read_after_close_get_the_rest_of_their_text():
    """Found in review: once close() had stopped the controller's loop, the next read raised ClosedError and the
    text the finished request had left unread was lost (read slowly, in another thread, most of it). Both ways of
    iterating, paused after their first piece while the cluster closes."""
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    loop = asyncio.new_event_loop()  # not asyncio.run: its end would close the async stream early
    try:
        with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20) as c:
            full = c.generate(MODEL, PROMPT, params=params).text
            sync_stream = c.stream(MODEL, PROMPT, params=params)
            sync_pieces = iter(sync_stream)
            sync_got = [next(sync_pieces)]
            async_stream = c.stream(MODEL, PROMPT, params=params)
            async_pieces = async_stream.__aiter__()
            async_got = [loop.run_until_complete(async_pieces.__anext__())]
            c.close()

            sync_got += list(sync_pieces)

            async def rest():
                return [piece async for piece in async_pieces]

            async_got += loop.run_until_complete(rest())
    finally:
        loop.close()
    assert "".join(sync_got) == full and sync_stream.finish_reason == "length"
    assert "".join(async_got) == full and async_stream.finish_reason == "length"


def test_an_exception_in_its_with_block_closes_the_cluster_at_once_and_stops_its_unread_streams():
    """Found in review: an exception raised in a ``with Cluster(...)`` block whose code held a partly read stream
    reached the caller only after the close's whole drain (33-35 s): the traceback kept the stream alive, and the
    close waited for a generation nobody would read. Now an exception closes without a drain: the generation is
    stopped (it never runs to max_tokens), and reading on fails with the shutdown's OverloadedError."""
    paths = serving.demo_paths((MODEL,))
    params = SamplingParams(max_tokens=2000, temperature=0.0, ignore_eos=True)  # ~2048 context: minutes on CPU
    with pytest.raises(ValueError, match="the user's bug"):
        with warmserve.Cluster(paths[MODEL], cpu_workers=1, cpu_worker_memory_bytes=512 << 20) as c:
            stream = c.stream(MODEL, PROMPT, params=params)
            pieces = iter(stream)
            got = [next(pieces)]
            raised_s = time.monotonic()
            raise ValueError("the user's bug")
    took_s = time.monotonic() - raised_s
    with pytest.raises(OverloadedError, match="shut"):
        got += list(pieces)
    assert stream.finish_reason != "length", f"the unread generation ran to max_tokens ({took_s:.1f} s)"
    assert took_s < c.config.controller.drain_timeout_s, took_s
