"""Sampling values at the edge of float32 (found in review: temperature 1e-40 or repetition_penalty 1e-39 made
multinomial raise, and the engine step failed every request batched with them): tiny temperatures are greedy, the
repetition penalty has a floor, and a row with no distribution to draw from spares the rest of its batch."""

from __future__ import annotations

import pytest
import torch

from warmserve.engine import Engine, SamplingParams
from warmserve.engine.sampler import sample
from warmserve.errors import InvalidArgumentError
from warmserve.protocol import GREEDY_TEMPERATURE, MIN_REPETITION_PENALTY

VOCAB = 64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_temperature_below_the_greedy_bound_takes_the_argmax():
    logits = torch.randn(2, VOCAB, generator=_gen(0))
    tiny = [SamplingParams(temperature=t) for t in (1e-40, 1e-30)]
    assert all(p.greedy for p in tiny)
    assert sample(logits, tiny, [_gen(1), _gen(2)]) == logits.argmax(-1).tolist()
    assert not SamplingParams(temperature=GREEDY_TEMPERATURE).greedy


def test_a_repetition_penalty_below_its_floor_is_refused_naming_it_and_the_floor():
    with pytest.raises(InvalidArgumentError) as e:
        SamplingParams(repetition_penalty=1e-39)
    assert e.value.fields["param"] == "repetition_penalty"
    assert str(MIN_REPETITION_PENALTY) in str(e.value)
    floor = SamplingParams(temperature=1.0, repetition_penalty=MIN_REPETITION_PENALTY)
    logits = torch.full((1, VOCAB), 1e4)
    assert 0 <= sample(logits, [floor], [_gen(0)], [([1, 2, 3], [])])[0] < VOCAB


def test_a_row_with_no_distribution_takes_its_argmax_and_its_batch_draws_as_alone():
    good = torch.randn(2, VOCAB, generator=_gen(3))
    nan_row = torch.randn(VOCAB, generator=_gen(4))
    nan_row[5] = float("nan")
    inf_row = torch.zeros(VOCAB)
    inf_row[9] = float("inf")
    dead_row = torch.full((VOCAB,), float("-inf"))
    logits = torch.stack([good[0], nan_row, inf_row, dead_row, good[1]])
    drawn = SamplingParams(temperature=1.0, seed=11)
    out = sample(logits, [drawn] * 5, [_gen(21), _gen(22), _gen(23), _gen(24), _gen(25)])
    alone = [sample(good[i:i + 1], [drawn], [_gen(seed)])[0] for i, seed in ((0, 21), (1, 25))]
    assert [out[0], out[4]] == alone
    assert out[1] == int(torch.nan_to_num(nan_row, nan=float("-inf")).argmax())
    assert out[2] == 9
    assert 0 <= out[3] < VOCAB


def test_a_tiny_temperature_in_the_batch_leaves_its_neighbours_to_finish_as_alone(lm):
    g = _gen(5)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (12, 30, 7)]
    bystander = SamplingParams(max_tokens=24, ignore_eos=True)
    seeded = SamplingParams(max_tokens=24, ignore_eos=True, temperature=0.8, seed=3)
    tiny = SamplingParams(max_tokens=8, ignore_eos=True, temperature=1e-40)
    with Engine(lm) as eng:
        want = [eng.generate([prompts[0]], bystander)[0], eng.generate([prompts[1]], seeded)[0],
                eng.generate([prompts[2]], SamplingParams(max_tokens=8, ignore_eos=True))[0]]
    with Engine(lm) as eng:
        for rid, p, params in zip("abc", prompts, (bystander, seeded, tiny)):
            eng.add_request(rid, p, params)
        got = {rid: [] for rid in "abc"}
        reasons = {}
        while eng.has_unfinished():
            for o in eng.step():
                got[o.request_id] += o.token_ids
                if o.finished:
                    reasons[o.request_id] = o.finish_reason
    assert [got[r] for r in "abc"] == want
    assert reasons == {"a": "length", "b": "length", "c": "length"}
