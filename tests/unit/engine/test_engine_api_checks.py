"""The engine's own API, from review: an id whose abort is not reported yet is not taken again, generate() runs
an idle engine only, and the constructor's counts and the token ids are checked with typed errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from warmserve.engine import Engine, SamplingParams
from warmserve.errors import InvalidArgumentError


def _drain(eng) -> list[tuple]:
    events = []
    while eng.has_unfinished():
        events += [(o.request_id, list(o.token_ids), o.finished, o.finish_reason) for o in eng.step()]
    return events


def test_an_aborted_id_is_not_taken_again_before_its_abort_is_reported(lm):
    """The abort's output comes with the next step: the same id added before it read, to its caller, as ended
    by that output, and the new request's tokens followed under a finished id."""
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    with Engine(lm) as eng:
        eng.add_request("a", [1, 2, 3, 4], params)
        eng.step()
        eng.abort("a")
        with pytest.raises(InvalidArgumentError, match="'a' was aborted and its abort is reported at the next step"):
            eng.add_request("a", [5, 6, 7], params)
        assert _drain(eng) == [("a", [], True, "abort")]
        eng.add_request("a", [5, 6, 7], params)  # reported: the id is free
        events = _drain(eng)
        assert sum(len(t) for _, t, _, _ in events) == 4 and events[-1][2:] == (True, "length")


def test_generate_refuses_while_other_requests_run_and_leaves_them_untouched(lm):
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    with Engine(lm) as eng:
        eng.add_request("other", [1, 2, 3], params)
        with pytest.raises(InvalidArgumentError, match="generate\\(\\) runs an idle engine: 1 requests are running"):
            eng.generate([[4, 5, 6]], params)
        events = _drain(eng)
        assert sum(len(t) for _, t, _, _ in events) == 5 and events[-1][0] == "other" and events[-1][2]
        assert len(eng.generate([[4, 5, 6]], params)[0]) == 5  # idle again: it runs


@pytest.mark.parametrize("kwargs,name", [
    (dict(target_free_blocks=-1), "target_free_blocks"), (dict(map_blocks_per_step=0), "map_blocks_per_step"),
    (dict(max_batch_tokens=1.5), "max_batch_tokens"), (dict(max_num_seqs=True), "max_num_seqs"),
    (dict(max_batch_tokens=0), "max_batch_tokens"),
    # found in review: "3" a bare TypeError, 1.5 and True a tensor-shape error naming no argument
    (dict(kv_blocks="3"), "kv_blocks"), (dict(kv_blocks=1.5), "kv_blocks"), (dict(kv_blocks=True), "kv_blocks")])
def test_the_constructor_refuses_counts_that_are_not_whole_numbers_in_range(lm, kwargs, name):
    with pytest.raises(InvalidArgumentError, match=f"{name} must be a whole number") as e:
        Engine(lm, **kwargs)
    assert e.value.fields["param"] == name
    with Engine(lm, target_free_blocks=None, map_blocks_per_step=1) as eng:  # None: every block, as documented
        assert eng.kv.target_free_blocks == eng.kv.total_blocks


@pytest.mark.parametrize("prompt", [[1.7, 2.9], ["7", "8"], ["a"], [None], [True, 2]])
def test_token_ids_of_the_wrong_type_are_refused_by_name(lm, prompt):
    """Floats were truncated ([1.7, 2.9] ran as [1, 2]), strings parsed, and None or "a" raised bare errors."""
    with Engine(lm) as eng:
        with pytest.raises(InvalidArgumentError, match="prompt_token_ids must be integer token ids"):
            eng.add_request("r", prompt, SamplingParams(max_tokens=1))
        with pytest.raises(InvalidArgumentError, match="output_token_ids must be integer token ids"):
            eng.add_request("r", [1, 2], SamplingParams(max_tokens=3), output_token_ids=[1.5])
        assert not eng.has_unfinished()
        # integers of other kinds are ints
        eng.add_request("n", np.array([3, 4], dtype=np.int64), SamplingParams(max_tokens=1))
        eng.add_request("t", torch.tensor([3, 4]), SamplingParams(max_tokens=1))
        assert eng.seqs["n"].prompt == eng.seqs["t"].prompt == [3, 4]


@pytest.mark.parametrize("budget", [0, -5, 2.5])
def test_a_step_budget_below_one_token_is_refused_and_leaves_the_engine_as_it_was(lm, budget):
    """Found in review: step(0) ran nothing, yet marked the engine stalled and pool-starved and gave back its
    headroom blocks, which on a shared pool makes every neighbour give back theirs."""
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    with Engine(lm) as eng:
        eng.add_request("a", [1, 2, 3, 4], params)
        free_before = eng.kv.num_free_mapped
        with pytest.raises(InvalidArgumentError, match="max_tokens must be a whole number >= 1") as e:
            eng.step(budget)
        assert e.value.fields["param"] == "max_tokens"
        assert (eng.stalled, eng.pool_starved, eng.kv.num_free_mapped) == (False, False, free_before)
        assert sum(len(t) for _, t, _, _ in _drain(eng)) == 3
