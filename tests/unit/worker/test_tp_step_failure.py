"""An engine step of a tensor-parallel instance that raises on every rank alike (an engine bug: the ranks run the
same code over the same state) is an engine failure, as at tp = 1: its requests end with EngineError and the
group serves on (found in review: the leader answered WorkerLostError, a lost worker, and the controller stopped
the instance and moved its requests). A step that raised on the leader alone may leave the others in one of its
collectives: the instance is over then, answered at once as a lost rank, and nothing more is sent into the group.
Two in-process workers with real gloo groups, real shards and real page pools; the failures are real exceptions
of the engine's own code, from state corrupted as a bug would leave it."""

from __future__ import annotations

import time

import msgspec
import pytest

from warmserve import protocol as P
from warmserve.worker import tp

from test_tp_kv_compaction import MODEL, Leader
from test_tp_lockstep import tp2_workers

pytestmark = pytest.mark.slow

GREEDY = P.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
PROMPT = [1, 2, 3, 4]


def _overflow_a_token(seq, vocab: int) -> None:
    """Fails the next step before its first collective: its input ids no longer fit a tensor."""
    seq.output[-1] = 1 << 70


def _token_past_the_vocabulary(seq, vocab: int) -> None:
    """Fails the next step after its last collective: a shard embeds a token past the vocabulary as zeros, so the
    forward runs, and the repetition penalty then indexes the gathered logits with it."""
    seq.params = msgspec.structs.replace(seq.params, repetition_penalty=1.5)
    seq.output[-1] = vocab + 5


def _running_seq(worker):
    (seq,) = worker.core.instances[MODEL].engine.scheduler.running
    return seq


def _corrupt(worker, corrupt) -> None:
    inst = worker.core.instances[MODEL]
    vocab = inst.engine.cfg.vocab_size
    if inst.follower:
        with inst.tp.lock:  # out of the engine: the follower's thread steps it
            corrupt(_running_seq(worker), vocab)
    else:
        corrupt(_running_seq(worker), vocab)


def _errors(lead, rid: int) -> list:
    return [m for m in lead.replies if isinstance(m, P.Error) and m.id == rid]


@pytest.mark.parametrize("corrupt, cause", [(_overflow_a_token, "ValueError"),
                                            (_token_past_the_vocabulary, "IndexError")])
def test_a_step_that_fails_on_every_rank_is_an_engine_error_and_the_group_serves_on(tiny_models, corrupt, cause):
    with tp2_workers(tiny_models) as ranks:
        lead = Leader(ranks[0])
        ref = lead.send(P.Generate, model=MODEL, prompt_ids=PROMPT, sampling=GREEDY)
        lead.tick_until(lambda: lead.finished(ref))

        victim = lead.send(P.Generate, model=MODEL, prompt_ids=PROMPT, sampling=GREEDY)
        lead.core.tick()  # its prefill, on both ranks: one token out
        assert len(lead.tokens(victim)) == 1
        for w in ranks:  # the same state on every rank, as the same bug leaves it
            _corrupt(w, corrupt)
        t0 = time.monotonic()
        lead.core.tick()
        (err,) = _errors(lead, victim)
        assert err.type == "EngineError", err
        assert err.fields == {"model": MODEL, "cause": cause} and "Not the request's fault" in err.message
        assert time.monotonic() - t0 < tp.STEP_FAILURE_WAIT_S  # the ranks agreed at once: nothing was waited out

        follower = ranks[1].core.instances[MODEL].tp
        assert lead.core.instances[MODEL].broken is None
        assert follower.running and follower.error is None
        again = lead.send(P.Generate, model=MODEL, prompt_ids=PROMPT, sampling=GREEDY)
        lead.tick_until(lambda: lead.finished(again))
        assert not _errors(lead, again)
        assert lead.tokens(again) == lead.tokens(ref)  # both ranks serve on in step: the same greedy tokens
        assert follower.running and follower.error is None


def test_a_step_that_fails_on_the_leader_alone_ends_the_instance_as_a_lost_rank(tiny_models):
    group_timeout_s = 4.0
    with tp2_workers(tiny_models, group_timeout_s) as ranks:
        lead = Leader(ranks[0])
        victim = lead.send(P.Generate, model=MODEL, prompt_ids=PROMPT, sampling=GREEDY)
        lead.core.tick()
        _corrupt(ranks[0], _overflow_a_token)  # the follower's state is sound: it enters the step's collectives
        t0 = time.monotonic()
        lead.core.tick()
        (err,) = _errors(lead, victim)
        assert err.type == "WorkerLostError" and "lost a rank" in err.message, err
        # Answered after the wait for the other ranks' word, not the group's timeout.
        assert time.monotonic() - t0 < tp.STEP_FAILURE_WAIT_S + group_timeout_s / 2
        assert lead.core.instances[MODEL].broken is not None
        # The leader sent nothing into the group after its failed step: the follower, left in the step's first
        # collective, fails there at the group's timeout, as a lost rank.
        follower = ranks[1].core.instances[MODEL].tp
        assert follower.join(group_timeout_s * 3)
        assert follower.error is not None and follower.error.fields.get("group_id") == "g", follower.error
