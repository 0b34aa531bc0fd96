"""Requests move between instances. A Migrate stops an instance at once and its requests resume on another
instance of the model after the tokens they had streamed: greedy decoding goes on as the uninterrupted run would
have. A request on as many lost workers as max_worker_losses_per_request fails instead of starting over again."""

import asyncio
import os
import signal
import time

import pytest

from warmserve.engine import SamplingParams
from warmserve.errors import WorkerLostError
from warmserve.policy import actions as A
from warmserve.policy.config import PolicyConfig

import serving

MODEL = "llama-20m"
#: 80 tokens: a request is moved (or its worker killed) once it has streamed 10 (5), so 70 or more are generated
#: after the move and compared with the uninterrupted run, and the move lands well before the end; 200 took 5 s a
#: generation on the loaded 2-core machine, for nothing more checked.
PARAMS = SamplingParams(max_tokens=80, temperature=0.0, ignore_eos=True)

# A long minimum lifetime: the policy scales neither instance in while the test moves requests between them.
cluster = serving.cluster_fixture(models=(MODEL,), cpu_worker_memory_bytes=512 << 20,
                                  policy_config=PolicyConfig(window_s=30, min_lifetime_s=600))
strict = serving.cluster_fixture(models=(MODEL,), cpu_worker_memory_bytes=512 << 20, max_worker_losses_per_request=1)


def _in_loop(c, fn):
    """Run fn() on the controller's event loop (the driver is not thread-safe) and return its result."""
    async def call():
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), c._loop).result(10)


def _streaming(ctl, min_tokens: int):
    """The first running request that has streamed at least min_tokens, or None."""
    for w in list(ctl.gpu_workers):
        for req in list(w.gens.values()):
            if req.generated >= min_tokens and not req.done:
                return req
    return None


async def _when(cond, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while (x := cond()) is None:
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
    return x


def test_a_migrated_request_goes_on_where_it_stopped_on_another_instance(cluster):
    ctl = cluster.controller
    prompt = "a request that moves between instances"
    want = cluster.generate(MODEL, prompt, params=PARAMS)  # uninterrupted, alone on its instance
    assert want.completion_tokens == PARAMS.max_tokens

    def start_second():
        busy = {g for i in ctl.driver.state.instances.values() for g in i.gpus}
        free = [g for g in ctl.driver.live_gpus() if g not in busy]
        ctl.driver.apply(A.StartInstance(f"{MODEL}/moved-to", MODEL, (free[0],)), ctl.now_s())

    _in_loop(cluster, start_second)
    deadline = time.monotonic() + 60
    while sum(i["ready"] for i in cluster.stats()["instances"] if i["model"] == MODEL) < 2:
        assert time.monotonic() < deadline, cluster.stats()["instances"]
        time.sleep(0.1)

    async def run():
        fut = asyncio.ensure_future(cluster.agenerate(MODEL, prompt, params=PARAMS))
        req = await _when(lambda: _streaming(ctl, 10))
        iid = req.instance_id
        _in_loop(cluster, lambda: ctl.driver.apply(A.Migrate(iid), ctl.now_s()))
        return await asyncio.wait_for(fut, 60), req, iid

    got, req, moved_from = asyncio.run(run())
    assert got.token_ids == want.token_ids
    assert got.completion_tokens == PARAMS.max_tokens
    assert moved_from not in ctl.driver.state.instances  # stopped at once, not drained
    assert req.instance_id not in (None, moved_from)
    assert ctl.metrics.resumed.get(model=MODEL, why="migrated") == 1
    assert not any(r.instance_id == moved_from for w in ctl.gpu_workers for r in list(w.gens.values()))


def test_a_request_fails_once_it_was_on_max_worker_losses_per_request_lost_workers(strict):
    ctl = strict.controller

    async def run():
        fut = asyncio.ensure_future(strict.agenerate(MODEL, "a request whose worker dies", params=PARAMS))
        req = await _when(lambda: _streaming(ctl, 5))
        os.kill(req.worker.pid, signal.SIGKILL)
        return await asyncio.wait_for(fut, 60)

    with pytest.raises(WorkerLostError, match="max_worker_losses_per_request"):
        asyncio.run(run())
    assert ctl.metrics.resumed.get(model=MODEL, why="worker_lost") == 0
    assert strict.generate(MODEL, "still serving", max_tokens=4).completion_tokens >= 1
