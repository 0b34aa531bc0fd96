"""Engine methods called directly with what they cannot take, and a KV shrink that fails (found in review).

``add_request`` with its params as a dict failed with "'dict' object has no attribute 'max_tokens_defaulted'"
(and an empty dict ran with the defaults), a request id that is a list with "unhashable type: 'list'";
``raise_kv_cap("9")`` with "'<=' not supported between instances of 'int' and 'str'". Each is now an
InvalidArgumentError naming the argument, what was given and what it takes, and the engine serves on.

``set_kv_target_free_blocks`` whose give-back fails in the driver raised the driver's bare words ("unmapping of
2.0 MiB: EINVAL (Invalid argument)"): nothing said the target was set anyway, how many blocks stayed mapped, nor
that the give-back is retried. Still a DriverError (its code and name kept), now with those numbers; nothing is
lost: the request running beside it gets every token it would have, and a later step gives the blocks back."""

from __future__ import annotations

import pytest

from warmserve import _C
from warmserve.engine import Engine, SamplingParams
from warmserve.errors import DriverError, InvalidArgumentError

PARAMS = SamplingParams(max_tokens=6, ignore_eos=True)
PROMPT = list(range(1, 200))


@pytest.fixture
def fail_unmap():
    """fail_unmap(k): the k-th unmap from now fails (k=1: the next one); disarmed after the test."""
    yield lambda k: _C._debug_fail_after("protect_hard", k)
    _C._debug_fail_after("protect_hard", 0)


def test_a_failed_shrink_says_what_stays_mapped_and_loses_nothing(lm, fail_unmap):
    with Engine(lm) as ref:
        want = ref.generate([PROMPT], PARAMS)[0]
    got = []
    with Engine(lm, target_free_blocks=8) as eng:
        eng.add_request("A", PROMPT, PARAMS)
        got += eng.step()[0].token_ids
        free = eng.kv.num_free_mapped
        assert free > 0
        fail_unmap(1)
        with pytest.raises(DriverError) as e:
            eng.set_kv_target_free_blocks(0)
        fail_unmap(0)
        msg = str(e.value)
        assert f"{free} free KV blocks" in msg and "target" in msg and "retries" in msg, msg
        assert e.value.target_free_blocks == 0 and e.value.kv_blocks_free_mapped == eng.kv.num_free_mapped > 0
        assert e.value.name and e.value.code, "the driver's own error is kept"
        assert eng.kv_stats().kv_free_target == 0
        while eng.has_unfinished():
            for o in eng.step():
                got += o.token_ids
        assert got == want
        assert eng.kv.num_free_mapped == 0, "a later step gave the blocks back"


@pytest.mark.parametrize("call, param, given, wants", [
    (lambda e: e.add_request("A", PROMPT, {"max_tokens": 3}), "params", "dict", "SamplingParams"),
    (lambda e: e.add_request("A", PROMPT, {}), "params", "dict", "SamplingParams"),
    (lambda e: e.add_request(["A"], PROMPT, PARAMS), "request_id", "['A']", "str"),
    (lambda e: e.raise_kv_cap("9"), "kv_blocks", "'9'", "whole number"),
    (lambda e: e.raise_kv_cap(1.5), "kv_blocks", "1.5", "whole number"),
], ids=["params-dict", "params-empty-dict", "request-id-list", "kv-cap-str", "kv-cap-float"])
def test_a_bad_argument_is_an_invalid_argument_error_naming_it(lm, call, param, given, wants):
    with Engine(lm) as eng:
        with pytest.raises(InvalidArgumentError) as e:
            call(eng)
        msg = str(e.value)
        assert param in msg and given in msg and wants in msg and e.value.param == param, msg
        assert not eng.seqs
        eng.add_request("B", PROMPT, PARAMS)  # the engine serves on
        assert len(_drain(eng)) == PARAMS.max_tokens


def _drain(eng) -> list[int]:
    out = []
    while eng.has_unfinished():
        for o in eng.step():
            out += o.token_ids
    return out


def test_a_request_id_taken_twice_names_the_id_what_runs_and_the_fix(lm):
    with Engine(lm) as eng:
        eng.add_request("A", PROMPT, PARAMS)
        with pytest.raises(InvalidArgumentError) as e:
            eng.add_request("A", PROMPT, PARAMS)
        msg = str(e.value)
        assert "'A' is already running (1 running)" in msg and "an id of its own" in msg, msg
        assert e.value.request_id == "A"
        assert len(_drain(eng)) == PARAMS.max_tokens, "the first request runs on"
