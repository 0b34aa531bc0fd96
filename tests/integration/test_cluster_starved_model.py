"""A model whose only worker is lost (`dedicated`: one model per worker, the lost one restarted only after 30 s):
its requests wait in the controller's queue and time out there. What the caller gets, what is counted, and that
the queue still times out while the policy's tick fails."""

import math
import os
import signal
import time

import pytest

from warmserve import SamplingParams
from warmserve.errors import TimeoutError_

import serving

SERVED, STARVED = "llama-20m", "qwen2-30m"
REQUEST_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with serving.demo_cluster(tmp_path_factory, models=(SERVED, STARVED), cpu_workers=2,
                              cpu_worker_memory_bytes=512 << 20, policy="dedicated",
                              request_timeout_s=REQUEST_TIMEOUT_S, restart_backoff_s=30.0) as c:
        for m in (SERVED, STARVED):
            # ignore_eos: a random-weight model may sample its EOS first (seen once in CI: qwen2-30m's token 0)
            assert c.generate(m, "warm", params=SamplingParams(max_tokens=2, ignore_eos=True)).completion_tokens == 2
        ctl = c.controller
        (iid,) = [i for i, inst in ctl.instances.items() if inst.model == STARVED]
        os.kill(ctl.instances[iid].worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(i["model"] == STARVED for i in c.stats()["instances"]):
            assert time.monotonic() < deadline, "the killed worker was not noticed"
            time.sleep(0.05)
        yield c


def _server_timeout(call) -> float:
    """Seconds until ``call`` raised the controller's queue timeout (its own message, not the caller's)."""
    t0 = time.monotonic()
    with pytest.raises(TimeoutError_, match=f"no instance of '{STARVED}' could take the request") as e:
        call()
    assert e.value.timeout_s == REQUEST_TIMEOUT_S
    return time.monotonic() - t0


def test_the_queue_timeout_reaches_the_caller_as_it_is(cluster):
    """Found in review: Cluster._run took any TimeoutError_ for its own wait running out: with timeout_s=None it
    then raised a bare TypeError (formatting None), and with one given it claimed that wait had run out."""
    assert _server_timeout(lambda: cluster.generate(STARVED, "hello", max_tokens=2)) < 10
    assert _server_timeout(lambda: cluster.generate(STARVED, "hello", max_tokens=2, timeout_s=60)) < 10
    assert _server_timeout(lambda: cluster.generate(STARVED, "hello", max_tokens=2, timeout_s=math.inf)) < 10
    assert _server_timeout(lambda: list(cluster.stream(STARVED, "hello", max_tokens=2))) < 10
    assert cluster.generate(SERVED, "hello", max_tokens=2, temperature=0).completion_tokens == 2


def test_requests_that_never_reached_an_instance_add_no_prompt_tokens(cluster):
    """warmserve_prompt_tokens_total counts what instances prefill (docs/metrics.md). Found in review: counted
    at submit, a request that timed out in the queue added its prompt."""
    m = cluster.controller.metrics
    before = m.prompt_tokens.get(model=STARVED)
    for _ in range(2):
        with pytest.raises(TimeoutError_):
            cluster.generate(STARVED, [5, 6, 7, 8, 9], max_tokens=2, timeout_s=30)
    assert m.prompt_tokens.get(model=STARVED) == before
    served = m.prompt_tokens.get(model=SERVED)
    assert cluster.generate(SERVED, [5, 6, 7, 8, 9], max_tokens=2, temperature=0).completion_tokens == 2
    assert m.prompt_tokens.get(model=SERVED) == served + 5


def test_a_worker_being_restarted_counts_as_lost(cluster):
    """Found in review: warmserve_workers{state="lost"} read the records of lost workers, which a loss drops at
    once: always 0."""
    text = cluster.controller.metrics.registry.render()
    assert 'warmserve_workers{state="lost"} 1.0' in text, [l for l in text.splitlines() if "workers{" in l]
    assert 'warmserve_workers{state="ready"} 1.0' in text


def test_queued_requests_time_out_while_the_policy_tick_fails(cluster):
    """An injected fault (any bug in the policy's tick): found in review, expiring the queue ran in the same try
    as the tick, so while every tick failed, a queued request waited for ever."""
    driver = cluster.controller.driver

    def broken_tick(now_s):
        raise RuntimeError("injected policy bug")

    driver.tick = broken_tick
    try:
        time.sleep(0.5)  # a few ticks fail
        assert _server_timeout(lambda: cluster.generate(STARVED, "hello", max_tokens=2, timeout_s=8)) < 5
    finally:
        del driver.tick
