"""``collect()`` of a token stream that has ended already (found in review): it returned no tokens and ``None``
for the final event, which its signature promises is a ``Tokens``, so a caller's ``last.finish_reason`` failed
with an AttributeError far from the cause. Now ClosedError says what happened. A real worker serving tiny-llama
on loopback, through both clients."""

from __future__ import annotations

import asyncio

import pytest

from warmserve import protocol as P
from warmserve.errors import ClosedError
from warmserve.worker import WorkerClient
from warmserve.worker.async_client import AsyncWorkerClient

from tiny_llama_worker import tiny_llama_worker

pytestmark = pytest.mark.slow

GREEDY3 = P.SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
ENDED = r"generation \d+'s stream has ended already \(read to its end, or closed\)"


def test_collect_of_an_ended_stream_raises_closed_in_both_clients(tiny_models):
    with tiny_llama_worker(tiny_models, "w-collect") as (server, _, failures):
        with WorkerClient(server.endpoint) as c:
            s = c.generate("tiny-llama", [1, 2], GREEDY3)
            ids, last = s.collect()
            assert len(ids) == 3 and last.finished and last.finish_reason == "length"
            with pytest.raises(ClosedError, match=ENDED):
                s.collect()
            closed = c.generate("tiny-llama", [1, 2], GREEDY3)
            closed.close()
            with pytest.raises(ClosedError, match=ENDED):
                closed.collect()

        async def via_async():
            ac = AsyncWorkerClient(server.endpoint, heartbeat_interval_s=0.2, worker_timeout_s=30.0)
            try:
                s = await ac.generate("tiny-llama", [1, 2], GREEDY3)
                ids, last = await s.collect()
                assert len(ids) == 3 and last.finish_reason == "length"
                with pytest.raises(ClosedError, match=ENDED):
                    await s.collect()
            finally:
                await ac.close()

        asyncio.run(via_async())
    assert failures == []
