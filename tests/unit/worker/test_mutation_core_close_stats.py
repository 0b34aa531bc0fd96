"""Gaps found by mutation testing of worker/core.py, on a real WorkerCore over a real pool and real checkpoints in
Hugging Face layout (conftest's tiny models): a fresh worker's Stats say it is neither stopping nor draining;
close() gives back the pages of every loaded model, whether it is only prewarmed or also running; a prewarm that a
close() or an Evict cancels is answered to the peer that sent it."""

from __future__ import annotations

import pytest

from warmserve import protocol as P
from warmserve.engine.loader import ModelLoad
from warmserve.errors import CancelledError

from driven_core import PEER, DrivenCore


@pytest.fixture
def core():
    c = DrivenCore(96, worker_id="w-mut")
    yield c
    c.close()


def test_a_fresh_worker_says_it_is_neither_stopping_nor_draining(core):
    """Stats of a worker nobody has signalled: stopping False, draining False, no drain time left, nothing in
    flight, no models, every page free (a controller sends no work to a worker that says it is stopping)."""
    st = core.core.stats(id=7)
    assert (st.id, st.worker_id, st.device) == (7, "w-mut", "cpu")
    assert (st.stopping, st.draining, st.drain_left_s) == (False, False, 0.0)
    assert (st.in_flight, st.models, st.instances, st.groups) == (0, [], [], [])
    assert st.pool.free_bytes == st.pool.total_bytes == 96 << 20


def test_close_gives_back_the_pages_of_a_prewarmed_model_and_of_a_running_one(core, tiny_models):
    """One model prewarmed only, another prewarmed and activated (its Stats: rank 0 of no group): both hold pages;
    close() frees every page of the pool and forgets both models, by closing their weights, not by dropping its
    references to them (the test keeps its own, as a caller holding a model's load may)."""
    total = core.pool.total_bytes
    core.reply(core.send(P.Prewarm, path=tiny_models["tiny-llama"], name="idle"))
    core.reply(core.send(P.Prewarm, path=tiny_models["tiny-qwen2"], name="live"))
    core.reply(core.send(P.Activate, name="live", kv_blocks=1))
    st = core.core.stats()
    assert {m.name: m.state for m in st.models} == {"idle": "prewarmed", "live": "running"}
    # an instance of no tensor-parallel group: rank 0 of no group
    assert [(i.name, i.group_id, i.rank, i.shared) for i in st.instances] == [("live", "", 0, False)]
    assert core.pool.free_bytes < total
    held = [m.lm for m in core.core.models.values()]
    core.core.close()
    assert core.pool.free_bytes == total
    assert len(held) == 2
    assert (core.core.models, core.core.instances) == ({}, {})


@pytest.fixture
def held_load(monkeypatch):
    """A model load's thread held at its first stop check (the dtype conversion's) until cancel() sets its stop: a
    load that is still running when the worker acts on it, by construction rather than by timing."""
    check_stop = ModelLoad._check_stop

    def held(load):
        load._stop.wait(30.0)
        check_stop(load)

    monkeypatch.setattr(ModelLoad, "_check_stop", held)


def _prewarm_error(core: DrivenCore, pid: int) -> list:
    """(peer, exception) of each Error answering Prewarm ``pid``."""
    return [(peer, m.exception()) for peer, m in core.replies if isinstance(m, P.Error) and m.id == pid]


def test_close_during_a_prewarm_answers_its_sender_with_cancelled(core, tiny_models, held_load):
    """close() while a prewarm loads: the prewarm's sender (peer and request id) gets one CancelledError saying
    the worker closed, and every page is back in the pool."""
    pid = core.send(P.Prewarm, path=tiny_models["tiny-llama"], name="m", dtype="bfloat16")
    assert core.core.models["m"].state == "loading"
    core.core.close()
    errs = _prewarm_error(core, pid)
    assert [peer for peer, _ in errs] == [PEER]
    assert isinstance(errs[0][1], CancelledError) and "the worker closed" in str(errs[0][1])
    assert core.pool.free_bytes == core.pool.total_bytes


def test_an_evict_during_a_prewarm_answers_the_prewarm_to_its_sender(core, tiny_models, held_load):
    """Evict of a model still loading: the prewarm's sender gets a CancelledError, the Evict's an Evicted, both
    sent to the peer that asked, and the model is gone."""
    pid = core.send(P.Prewarm, path=tiny_models["tiny-llama"], name="m", dtype="bfloat16")
    eid = core.send(P.Evict, name="m")
    errs = _prewarm_error(core, pid)
    assert [peer for peer, _ in errs] == [PEER] and isinstance(errs[0][1], CancelledError)
    assert [(peer, m.name) for peer, m in core.replies if isinstance(m, P.Evicted) and m.id == eid] == [(PEER, "m")]
    assert "m" not in core.core.models and core.pool.free_bytes == core.pool.total_bytes
