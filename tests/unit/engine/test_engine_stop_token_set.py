"""stop_token_ids at scale, found in review: the engine looked each generated token up in the request's tuple of
stop ids, so one request with 1.5M of them slowed every request batched beside it about 5x, and nothing bounded
the list. Now the engine looks tokens up in a set built once per request, and a list longer than
MAX_STOP_TOKEN_IDS (the largest vocabulary of current models) is refused, naming stop_token_ids."""

from __future__ import annotations

import msgspec
import pytest
import torch

from warmserve.engine import Engine, SamplingParams
from warmserve.errors import InvalidArgumentError

from tiny_checkpoints import TINY_VOCAB

LIMIT = 1 << 18  # sampling.MAX_STOP_TOKEN_IDS, spelled out: the test states the documented limit


def test_a_long_stop_list_still_stops_on_its_ids_looked_up_in_a_set_built_once(lm):
    prompt = torch.randint(0, TINY_VOCAB, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    with Engine(lm) as eng:
        free_run = eng.generate([prompt], SamplingParams(max_tokens=24, ignore_eos=True))[0]
        x = free_run[6]
        cut = free_run.index(x) + 1
        # ids past the vocabulary (never generated), then the one that ends it
        params = SamplingParams(max_tokens=24, ignore_eos=True,
                                stop_token_ids=list(range(TINY_VOCAB, TINY_VOCAB + LIMIT - 1)) + [x])
        assert eng.generate([prompt], params)[0] == free_run[:cut]
    # the engine's lookups went to the set, cached on the request's params; the public field stays a tuple
    assert vars(params).get("stop_token_set") == frozenset(params.stop_token_ids)
    assert params.stop_token_set is params.stop_token_set and type(params.stop_token_ids) is tuple


def test_a_stop_list_longer_than_the_limit_is_refused_by_its_length():
    assert len(SamplingParams(stop_token_ids=[7] * LIMIT).stop_token_set) == 1
    for too_long in ([7] * (LIMIT + 1), (7,) * (LIMIT + 1), [object()] * (LIMIT + 1)):  # length before items
        with pytest.raises(InvalidArgumentError) as e:
            SamplingParams(stop_token_ids=too_long)
        assert e.value.param == "stop_token_ids" and e.value.max_stop_token_ids == LIMIT
        assert e.value.stop_token_ids_count == LIMIT + 1 and str(LIMIT) in e.value.message
    # decoded off the wire, as a worker decodes it (msgspec wraps the refusal in its ValidationError)
    wire = msgspec.msgpack.encode({"stop_token_ids": [7] * (LIMIT + 1)})
    with pytest.raises(msgspec.ValidationError, match=f"stop_token_ids has {LIMIT + 1} ids"):
        msgspec.msgpack.decode(wire, type=SamplingParams)
