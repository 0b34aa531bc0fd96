"""``LivePrewarm.wait`` (a tensor-parallel load's shards): a rank that fails is reported at once, and the whole wait
is bounded by one timeout. Found in review: the ranks were awaited in turn, each with the whole timeout, so a rank
refused at once was seen only after rank 0's load, and a load could wait tp x the timeout. The timeout is the typed
``TimeoutError_`` (a 504 to requests that wait on the model), naming the workers whose shard is missing."""
import asyncio
import time

import pytest

from warmserve import protocol as P
from warmserve.controller.prewarms import LivePrewarm
from warmserve.errors import TimeoutError_, WarmServeError


def test_failed_shard_reported_while_other_shard_still_loading():
    async def main():
        loop = asyncio.get_running_loop()
        pw = LivePrewarm("p1", "m", [object(), object()])
        slow, failed = loop.create_future(), loop.create_future()
        failed.set_result(P.Error.of(7, WarmServeError("disk on fire")))
        pw.futs = [slow, failed]  # rank 0 still loading, rank 1 refused at once
        t0 = time.monotonic()
        with pytest.raises(WarmServeError, match="disk on fire"):
            await asyncio.wait_for(pw.wait(timeout_s=2.0), 5.0)
        # the failure is known at once; it should not take the slow shard's timeout
        assert time.monotonic() - t0 < 1.0, f"failure reported after {time.monotonic() - t0:.2f} s"

    asyncio.run(main())


def test_total_wait_bounded_by_timeout_not_tp_times_timeout():
    async def main():
        loop = asyncio.get_running_loop()
        pw = LivePrewarm("p1", "m", ["worker-a", "worker-b"])
        a, b = loop.create_future(), loop.create_future()
        loop.call_later(0.9, a.set_result, P.Prewarmed(id=1, name="m", weight_bytes=1, pages=1, max_context=1,
                                                         load_s=0.0))
        pw.futs = [a, b]  # rank 1 never answers
        t0 = time.monotonic()
        with pytest.raises(TimeoutError_) as caught:
            await pw.wait(timeout_s=1.0)
        e = caught.value
        assert (e.http_status, e.timeout_s, e.model, e.shards_missing) == (504, 1.0, "m", 1)
        assert "1 of 2 shard(s) of 'm' not loaded within 1 s (on 'worker-b')" in str(e), e
        assert time.monotonic() - t0 < 1.5, f"waited {time.monotonic() - t0:.2f} s for a 1 s timeout"

    asyncio.run(main())
