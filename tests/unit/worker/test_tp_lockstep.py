"""A tensor-parallel instance of two in-process workers (real gloo groups, real shards, one thread per rank): a
rank that cannot apply the leader's plan stops every rank at once with a typed error, and nothing waits out the
group's timeout. The same code runs in `warmserve worker` processes (tests/integration/test_tp_worker.py)."""

from __future__ import annotations

import contextlib
import time

import pytest
from tp_groups import start_tp2

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import InProcessWorker
from warmserve.worker.tp import RanksDivergedError

pytestmark = pytest.mark.slow

GREEDY = P.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
MODEL = "tiny-llama"  # 4 heads, 2 KV heads: splits 2 ways
GROUP_TIMEOUT_S = 20.0


@contextlib.contextmanager
def tp2_workers(tiny_models, group_timeout_s: float = GROUP_TIMEOUT_S, **activate):
    """Rank 0 and rank 1 of a running tp-2 instance of tiny-llama, each an in-process worker (activated with
    ``activate``), closed at the end. Shared with test_tp_kv_shortfall.py."""
    workers = [InProcessWorker("cpu", memory_gib=0.125, prefault=False, worker_id=f"rank{r}") for r in range(2)]
    try:
        start_tp2(workers, tiny_models[MODEL], MODEL, group_timeout_s, **activate)
        yield workers
    finally:
        for w in workers:
            w.close()


@pytest.fixture
def ranks(tiny_models):
    """Rank 0 and rank 1 of a running tp-2 instance of tiny-llama, each an in-process worker."""
    with tp2_workers(tiny_models) as workers:
        yield workers


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


def _tick_until(worker, done, timeout_s: float = 10.0) -> None:
    """Tick an in-process worker (as its server loop does) until done() or the timeout."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        worker.core.tick()
        time.sleep(0.01)


def test_every_deactivate_a_running_follower_waits_with_is_answered(ranks):
    lead, follow = ranks
    got = []
    follow.core.emit = lambda peer, msg: got.append(msg)
    # Two Deactivates while the follower's thread runs: each waits for the leader's stop (found in review: the
    # second overwrote the first, which was never answered).
    follow.core.handle(b"ctl", P.Deactivate(id=901, name=MODEL))
    follow.core.handle(b"ctl", P.Deactivate(id=902, name=MODEL))
    assert got == []
    lead.deactivate(MODEL)
    _tick_until(follow, lambda: len(got) >= 2)
    assert sorted((type(m).__name__, m.id) for m in got) == [("Deactivated", 901), ("Deactivated", 902)]
    assert follow.core.instances == {} and follow.core.models[MODEL].state == "prewarmed"


def test_a_follower_left_mid_step_is_closed_only_once_its_thread_is_out_of_the_engine(ranks):
    lead, follow = ranks
    f_inst = follow.core.instances[MODEL]
    got = []
    with f_inst.tp.lock:  # as the follower's thread holds it while it steps
        follow.leave_group("g")
        # Not closed under the step: the instance stays, its model running, so nothing binds or maps them.
        assert not f_inst.engine.closed and follow.core.instances[MODEL] is f_inst
        with pytest.raises(errors.ModelStateError):
            follow.activate(MODEL)
        follow.core.emit = lambda peer, msg: got.append(msg)
        follow.core.handle(b"ctl", P.Deactivate(id=903, name=MODEL))  # answered once the engine is closed
        follow.core.tick()
        assert got == [] and not f_inst.engine.closed
    t0 = time.monotonic()
    # The leader's next plan ends the follower's loop, which tells it this rank was closed: a lost rank.
    with pytest.raises(errors.WorkerLostError):
        lead.generate(MODEL, [1, 2, 3], GREEDY).collect()
    assert time.monotonic() - t0 < GROUP_TIMEOUT_S / 2
    assert f_inst.tp.join(5.0)
    _tick_until(follow, lambda: not follow.core.instances)
    assert f_inst.engine.closed and [(type(m).__name__, m.id) for m in got] == [("Deactivated", 903)]
    st = follow.core.stats()
    assert st.instances == [] and [m.state for m in st.models] == ["prewarmed"]
    assert st.pool.free_pages + sum(m.pages for m in st.models) == st.pool.total_pages  # no KV page left mapped
