"""No error path leaves a request counted in flight: requests that fail on real workers (values the front end
would have refused, sent straight to the controller), requests the wire cannot carry, and requests aborted while
queued, before their first token or mid-stream. Afterwards no instance, worker or queue counts a request, and
each worker's pool is back to its free pages: no KV block used, no page that no role accounts for."""

import asyncio
import time

from warmserve import protocol as P
from warmserve.controller.views import pages_by_role
from warmserve.errors import InvalidArgumentError, PromptTooLongError, WarmServeError

import serving

MODEL = "llama-20m"

cluster = serving.cluster_fixture(models=(MODEL,), cpu_worker_memory_bytes=512 << 20, drain_timeout_s=5)


async def _drive(ctl) -> dict:
    """Runs on the controller's loop: each error path once; returns how each request ended."""
    out = {}

    async def ended(req):
        try:
            async for _ in req:
                pass
            return req.finish_reason
        except WarmServeError as e:
            return type(e).__name__

    ok = P.SamplingParams(max_tokens=4)
    # Refused by the worker's engine: a token outside the vocabulary, a prompt over the context.
    out["outside_vocab"] = await ended(await ctl.submit(MODEL, [5, 10 ** 9, 7], ok))
    out["over_context"] = await ended(await ctl.submit(MODEL, [11] * 3000, ok))
    # Refused on the way out: a token id the wire cannot encode.
    out["unencodable"] = await ended(await ctl.submit(MODEL, [2 ** 70], ok))
    # Aborted while queued (a burst beyond what can start at once), before the first token, and mid-stream.
    burst = [await ctl.submit(MODEL, [11, 12, 13], P.SamplingParams(max_tokens=64, ignore_eos=True))
             for _ in range(12)]
    for req in burst[-4:]:
        req.abort()
    long_one = await ctl.submit(MODEL, [11, 12], P.SamplingParams(max_tokens=500, ignore_eos=True))
    while long_one.generated < 3:
        await asyncio.sleep(0.01)
    long_one.abort()
    out["aborted_mid_stream"] = await ended(long_one)
    out["burst"] = sorted({await ended(r) for r in burst})
    out["after"] = await ended(await ctl.submit(MODEL, [11, 12, 13], ok))
    return out


async def _worker_stats(ctl) -> list[P.Stats]:
    return [await ctl.hub.call(w, P.GetStats(id=ctl.hub.next_id())) for w in ctl.gpu_workers]


def test_error_paths_and_aborts_leave_nothing_in_flight_and_every_pool_whole(cluster):
    ctl = cluster.controller
    assert cluster.generate(MODEL, "warm up", max_tokens=2).completion_tokens >= 1
    out = cluster._run(_drive(ctl), 120)
    assert out["outside_vocab"] == InvalidArgumentError.__name__
    assert out["over_context"] == PromptTooLongError.__name__
    assert out["unencodable"] == InvalidArgumentError.__name__
    assert out["aborted_mid_stream"] == "abort"
    assert set(out["burst"]) <= {"abort", "length"} and out["after"] == "length"

    deadline = time.monotonic() + 15
    while True:
        stats = cluster._run(_worker_stats(ctl), 30)
        problems = [f"{ctl.gpu_workers[i]!r}: {s.in_flight} generations" for i, s in enumerate(stats) if s.in_flight]
        problems += [f"{i.name}: {i.kv.kv_blocks_used} KV blocks used" for s in stats for i in s.instances
                     if i.kv.kv_blocks_used]
        problems += [f"{s.worker_id}: {pages_by_role(s, ctl.models)['unaccounted']} pages unaccounted"
                     for s in stats if pages_by_role(s, ctl.models)["unaccounted"]]
        problems += [f"instance {iid}: in flight {st.in_flight}" for iid, st in ctl.state.instances.items()
                     if st.in_flight]
        problems += [f"{w!r}: {len(w.gens)} requests" for w in ctl.gpu_workers if w.gens]
        problems += [f"queued {m}: {len(q)}" for m, q in ctl.state.queues.items() if q]
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert problems == []
    assert ctl.metrics.workers_lost.get() == 0
