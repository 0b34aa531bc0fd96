"""A request whose prompt logprobs could not come back in one message is refused before it is queued. The first
Tokens message of a request carries the logprobs of all its prompt's tokens, and the controller's worker socket
drops a message over ``MAX_WORKER_MESSAGE_BYTES`` (and the connection it came on, which the worker makes again):
found in review, such a request then waited for ever, and nothing on either side said why (from about 900k prompt
tokens with 20 alternatives)."""

import pytest

from warmserve import protocol as P
from warmserve.controller import workers
from warmserve.controller.errors import OverloadedError
from warmserve.errors import InvalidArgumentError
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, make_controller


def test_a_prompt_whose_logprobs_could_not_come_back_is_refused_before_it_is_queued(model):
    c = make_controller(model)
    c.closing = True  # a request past the check is refused next, as the server shuts down: nothing is queued
    with pytest.raises(InvalidArgumentError, match="shorten the prompt") as e:
        c.submit_nowait(MODEL, [5] * 900_000, SamplingParams(max_tokens=1, prompt_logprobs=20))
    assert e.value.param == "logprobs" and e.value.fields["prompt_tokens"] == 900_000
    # Below the bound, or without prompt logprobs, the request goes on (to the shutdown's refusal).
    for ids, k in (([5] * 700_000, 20), ([5] * 900_000, None), ([5] * 3_000_000, 0)):
        with pytest.raises(OverloadedError):
            c.submit_nowait(MODEL, ids, SamplingParams(max_tokens=1, prompt_logprobs=k))


def test_the_bound_holds_for_the_largest_entries_a_worker_can_send():
    for k in (0, 1, 5, 20):
        worst = P.TokenLogprobs(logprob=-1.5, top_ids=[2 ** 32 - 1] * (k + 1), top_logprobs=[-1.5] * (k + 1))
        n = 2000
        size = len(P.encode(P.Tokens(id=2 ** 31, token_ids=[2 ** 32 - 1], prompt_logprobs=[worst] * n, seq=7,
                                     logprobs=[worst])))
        assert size <= n * workers._prompt_logprob_bytes(k) + workers._TOKENS_OVERHEAD_BYTES
