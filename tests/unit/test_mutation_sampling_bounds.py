"""SamplingParams' range checks at their ends (warmserve/sampling.py), found by mutation testing: each bound is
taken as given (a value at it is accepted, one just past it refused, naming the parameter), and the limits are the
numbers the module's comments give them."""

from __future__ import annotations

import pytest

from warmserve import sampling
from warmserve.errors import InvalidArgumentError
from warmserve.sampling import SamplingParams

#: (field, value at the bound (accepted), value just past it (refused)), with max_tokens 16 (the default).
BOUNDS = [
    ("max_tokens", 1, 0),
    ("temperature", 0.0, -1e-9),
    ("temperature", 2.0, 2.0 + 1e-9),
    ("min_p", 0.0, -1e-9),
    ("min_p", 1.0, 1.0 + 1e-9),
    ("min_tokens", 0, -1),
    ("min_tokens", 16, 17),
    ("top_p", 1.0, 1.0 + 1e-9),
    ("top_p", 1e-9, 0.0),
    ("top_k", 0, -2),
    ("top_k", (1 << 63) - 1, 1 << 63),
    ("seed", -(1 << 63), -(1 << 63) - 1),
    ("seed", (1 << 64) - 1, 1 << 64),
    ("presence_penalty", -2.0, -2.0 - 1e-9),
    ("presence_penalty", 2.0, 2.0 + 1e-9),
    ("frequency_penalty", -2.0, -2.0 - 1e-9),
    ("frequency_penalty", 2.0, 2.0 + 1e-9),
    ("repetition_penalty", 0.01, 0.01 - 1e-9),
    ("repetition_penalty", 2.0, 2.0 + 1e-9),
    ("logprobs", 0, -1),
    ("logprobs", 20, 21),
    ("prompt_logprobs", 0, -1),
    ("prompt_logprobs", 20, 21),
]


@pytest.mark.parametrize("field, at, past", BOUNDS, ids=[f"{f}={a}" for f, a, _ in BOUNDS])
def test_a_value_at_its_bound_is_taken_and_one_past_it_refused(field, at, past):
    """The bound itself belongs to the range (the docs say [0, 2], [-2, 2], (0, 1], ...): a < where a <= is meant
    would refuse a value a client may send; one past it is refused with the parameter named."""
    assert getattr(SamplingParams(**{field: at}), field) == at
    with pytest.raises(InvalidArgumentError) as e:
        SamplingParams(**{field: past})
    assert e.value.fields["param"] == field


def test_the_limits_are_the_documented_numbers():
    """Seeds fit 64 bits, token ids a signed 64-bit integer, 20 alternatives (OpenAI's and vLLM's), 2**18 stop ids
    (Gemma 3's vocabulary), 64 stop strings, greedy below 1e-5, a repetition penalty of at least 0.01."""
    assert (sampling.SEED_MIN, sampling.SEED_MAX) == (-9223372036854775808, 18446744073709551615)
    assert sampling.MAX_TOKEN_ID == 9223372036854775807
    assert sampling.MAX_TOP_LOGPROBS == 20 and sampling.MAX_STOP_STRINGS == 64
    assert sampling.MAX_STOP_TOKEN_IDS == 262144
    assert sampling.GREEDY_TEMPERATURE == 1e-5 and sampling.MIN_REPETITION_PENALTY == 0.01


def test_stop_lists_are_taken_up_to_their_limits():
    """64 stop strings and 262,144 stop ids (the largest id a signed 64-bit integer) are taken; one more of either
    is refused naming it."""
    assert len(SamplingParams(stop=[f"s{i}" for i in range(64)]).stop) == 64
    with pytest.raises(InvalidArgumentError) as e:
        SamplingParams(stop=[f"s{i}" for i in range(65)])
    assert e.value.fields["param"] == "stop"
    ids = list(range(262144 - 1)) + [(1 << 63) - 1]
    assert len(SamplingParams(stop_token_ids=ids).stop_token_set) == 262144
    with pytest.raises(InvalidArgumentError) as e:
        SamplingParams(stop_token_ids=ids + [5])
    assert e.value.fields["param"] == "stop_token_ids"
    with pytest.raises(InvalidArgumentError) as e:
        SamplingParams(stop_token_ids=[1 << 63])
    assert e.value.fields["param"] == "stop_token_ids"


def test_the_defaults_are_greedy_unpenalized_and_stop_at_eos():
    """A bare SamplingParams is greedy (temperature 0), has no penalty, keeps every token (top_p 1, top_k 0) and
    ends at EOS (ignore_eos False); greedy holds just below GREEDY_TEMPERATURE and for top_k 1."""
    p = SamplingParams()
    assert p.greedy and not p.penalized and not p.ignore_eos
    assert (p.max_tokens, p.top_p, p.top_k, p.min_p, p.min_tokens) == (16, 1.0, 0, 0.0, 0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert SamplingParams(temperature=0.99e-5).greedy and not SamplingParams(temperature=1e-5).greedy
    assert SamplingParams(temperature=1.0, top_k=1).greedy and not SamplingParams(temperature=1.0, top_k=2).greedy
    assert SamplingParams(frequency_penalty=-0.1).penalized and SamplingParams(repetition_penalty=0.99).penalized
