"""`Cluster.close()` lets running requests finish: a stream read on after the close still gets all of its text."""

import asyncio

from warmserve import SamplingParams

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
