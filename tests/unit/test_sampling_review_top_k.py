"""SamplingParams(top_k=-1), vLLM's "no cut" (its SamplingParams, and this project's HTTP API and
generation_config.json reading, take it): the same params as top_k=0, on the wire too. Found in review: refused with
"top_k must be in [0, ...]", so vLLM code ported to ``warmserve.Cluster(...).generate(params=...)`` failed."""

import pytest

from warmserve import protocol
from warmserve.errors import InvalidArgumentError
from warmserve.sampling import SamplingParams


def test_minus_one_is_no_cut_as_in_vllm():
    p = SamplingParams(top_k=-1, temperature=0.8)
    assert p.top_k == 0 and p == SamplingParams(temperature=0.8) and not p.greedy
    msg = protocol.Generate(id=1, model="m", prompt_ids=[1], sampling=p)
    assert protocol.decode_request(protocol.encode(msg)).sampling.top_k == 0


def test_below_minus_one_is_refused_naming_both_ways_to_say_no_cut():
    with pytest.raises(InvalidArgumentError, match=r"or -1 .* as 0 and -1 do\), got -2") as e:
        SamplingParams(top_k=-2)
    assert e.value.param == "top_k"
