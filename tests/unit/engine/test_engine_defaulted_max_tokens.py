"""A max_tokens the server filled in (SamplingParams.max_tokens_defaulted: a chat that set none gets the rest of the
model's context) on an instance whose KV cap holds less than the context: lowered to what fits, the request ending
with "length" there (found in review: refused with a 400 over a limit the client never sent). A max_tokens the
client asked for that cannot fit is refused as before."""

from __future__ import annotations

import pytest

from warmserve.engine import Engine, SamplingParams
from warmserve.errors import NoRoomHereError, PromptTooLongError
from warmserve.protocol import Generate, decode_request, encode

PROMPT = list(range(1, 11))


def _run(eng, rid):
    toks, reason = [], None
    while eng.has_unfinished():
        for o in eng.step():
            if o.request_id == rid:
                toks += o.token_ids
                reason = o.finish_reason if o.finished else reason
    return toks, reason


def test_a_defaulted_max_tokens_is_lowered_to_the_kv_cap_and_ends_with_length(lm):
    with Engine(lm, kv_blocks=1) as eng:
        # K/V for cap tokens: the last one sampled never has any
        cap = eng.kv.total_blocks * eng.kv.block_tokens
        assert cap < lm.max_context
        params = SamplingParams(max_tokens=lm.max_context - len(PROMPT), max_tokens_defaulted=True, ignore_eos=True)
        eng.add_request("chat", PROMPT, params)
        toks, reason = _run(eng, "chat")
        assert (len(toks), reason) == (cap + 1 - len(PROMPT), "length")
        # A resumption of it goes on to the same end.
        eng.add_request("again", PROMPT, params, toks[:5])
        more, reason = _run(eng, "again")
        assert (len(more), reason) == (cap + 1 - len(PROMPT) - 5, "length")


def test_an_explicit_max_tokens_over_the_kv_cap_is_still_refused(lm):
    with Engine(lm, kv_blocks=1) as eng:
        with pytest.raises(NoRoomHereError, match="KV blocks"):  # its share: an instance alone would hold it
            eng.add_request("x", PROMPT, SamplingParams(max_tokens=lm.max_context - len(PROMPT)))
        # A defaulted one whose prompt alone leaves no room is refused with the numbers too.
        with pytest.raises(PromptTooLongError, match="KV blocks"):
            eng.add_request("y", list(range(1, 300)), SamplingParams(max_tokens=100, max_tokens_defaulted=True))
        assert not eng.has_unfinished()


def test_the_defaulted_mark_crosses_the_wire():
    msg = Generate(id=1, model="m", prompt_ids=[1], sampling=SamplingParams(max_tokens=9, max_tokens_defaulted=True))
    assert decode_request(encode(msg)).sampling.max_tokens_defaulted
    assert not decode_request(encode(Generate(id=1, model="m", prompt_ids=[1]))).sampling.max_tokens_defaulted
