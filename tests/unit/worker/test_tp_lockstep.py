"""A tensor-parallel instance of two in-process workers (real gloo groups, real shards, one thread per rank): a
rank that cannot apply the leader's plan stops every rank at once with a typed error, and nothing waits out the
group's timeout. The same code runs in `warmserve worker` processes (tests/integration/test_tp_worker.py)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import InProcessWorker
from warmserve.worker.tp import RanksDivergedError

pytestmark = pytest.mark.slow

GREEDY = P.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
MODEL = "tiny-llama"  # 4 heads, 2 KV heads: splits 2 ways
GROUP_TIMEOUT_S = 20.0


@pytest.fixture
def ranks(tiny_models):
    """Rank 0 and rank 1 of a running tp-2 instance of tiny-llama, each an in-process worker."""
    workers = [InProcessWorker("cpu", memory_gib=0.125, prefault=False, worker_id=f"rank{r}") for r in range(2)]
    try:
        port = workers[0].host_group_store()
        with ThreadPoolExecutor(2) as pool:
            # Both calls meet in the group: one thread each; a failure on either thread is raised here.
            for f in [pool.submit(w.join_group, "g", r, 2, port, group_timeout_s=GROUP_TIMEOUT_S)
                      for r, w in enumerate(workers)]:
                f.result(60)
            for r, w in enumerate(workers):
                w.prewarm(tiny_models[MODEL], MODEL, tp=2, rank=r)
            for f in [pool.submit(w.activate, MODEL, group_id="g") for w in workers]:
                f.result(60)
        yield workers
    finally:
        for w in workers:
            w.close()


def test_the_ranks_step_together_and_answer_as_one_model(ranks):
    lead, _ = ranks
    got = lead.generate(MODEL, [1, 2, 3, 4], GREEDY).collect()[0]
    assert len(got) == GREEDY.max_tokens
    assert lead.generate(MODEL, [1, 2, 3, 4], GREEDY).collect()[0] == got  # greedy: the same tokens again


def test_a_follower_that_cannot_apply_a_plan_stops_every_rank_at_once(ranks):
    lead, follow = ranks
    f_inst = follow.core.instances[MODEL]

    def refuse(*args, **kwargs):
        raise errors.OutOfMemoryError("this rank's engine refused the request")

    # Only this rank's engine refuses: the leader admitted the request and is about to step with it.
    f_inst.engine.add_request = refuse
    t0 = time.monotonic()
    with pytest.raises(RanksDivergedError, match="could not apply the leader's plan"):
        lead.generate(MODEL, [1, 2, 3], GREEDY).collect()
    # At once, not after the group's timeout (before the agreement, the leader waited in a collective).
    assert time.monotonic() - t0 < GROUP_TIMEOUT_S / 2
    assert f_inst.tp.join(5.0)
    assert isinstance(f_inst.tp.error, errors.OutOfMemoryError)
    # The instance is over on both ranks, each saying why; the leader takes no more requests.
    with pytest.raises(errors.WorkerLostError, match="lost a rank"):
        lead.generate(MODEL, [1, 2], GREEDY).collect()
    lead.deactivate(MODEL)
    follow.deactivate(MODEL)
    assert lead.stats().instances == [] and follow.stats().instances == []
