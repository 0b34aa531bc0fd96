"""vLLM's min_tokens and min_p through the OpenAI request parsing and the controller's text stream. Found in review:
both were unknown fields, ignored without a word (a client asking for min_tokens=10 got fewer), and a stop string
ended the text before min_tokens tokens."""

from __future__ import annotations

import json

import pytest

from warmserve.controller import openai_api as oa
from warmserve.controller.textstream import TextStream
from warmserve.errors import InvalidArgumentError
from warmserve.protocol import SamplingParams


def body(**kw) -> bytes:
    return json.dumps(kw).encode()


USER = [{"role": "user", "content": "hi"}]


def test_min_tokens_and_min_p_reach_the_sampling():
    _, s = oa.parse_completion(body(model="m", prompt="hi", max_tokens=20, min_tokens=10, min_p=0.1))
    assert s.min_tokens == 10 and s.min_p == 0.1
    _, s = oa.parse_chat(body(model="m", messages=USER, max_completion_tokens=20, min_tokens=20, min_p=1))
    assert s.min_tokens == 20 and s.min_p == 1.0
    _, s = oa.parse_completion(body(model="m", prompt="hi", min_tokens=None, min_p=None))
    assert s.min_tokens == 0 and s.min_p == 0.0


def test_a_chat_without_max_tokens_takes_min_tokens_and_gets_the_context_left():
    req, s = oa.parse_chat(body(model="m", messages=USER, min_tokens=50))
    assert s.min_tokens == 50 and s.max_tokens == 50  # what must fit beside the prompt while it is checked
    s = oa.fill_max_tokens(req, s, max_context=1000, prompt_tokens=10)
    assert s.max_tokens == 990 and s.max_tokens_defaulted and s.min_tokens == 50


@pytest.mark.parametrize("fields, param, numbers", [
    (dict(max_tokens=5, min_tokens=6), "min_tokens", ["6", "5"]),
    (dict(min_tokens=17), "min_tokens", ["17", "16"]),  # the completions default max_tokens, 16
    (dict(min_tokens=-1), "min_tokens", ["-1"]),
    (dict(min_p=1.5), "min_p", ["1.5"]),
    (dict(min_p=-0.1), "min_p", ["-0.1"]),
    (dict(min_tokens="three"), "min_tokens", []),  # "3" is 3, as vLLM's lax types read it
    (dict(min_tokens=2.5), "min_tokens", []),
    (dict(min_p="low"), "min_p", []),
])
def test_bad_values_are_refused_naming_the_parameter(fields, param, numbers):
    with pytest.raises(InvalidArgumentError) as e:
        oa.parse_completion(body(model="m", prompt="hi", **fields))
    assert e.value.param == param and all(n in str(e.value) for n in numbers), str(e.value)


def test_chat_min_tokens_above_max_completion_tokens_is_refused_with_both():
    with pytest.raises(InvalidArgumentError) as e:
        oa.parse_chat(body(model="m", messages=USER, max_completion_tokens=4, min_tokens=9))
    assert e.value.param == "min_tokens" and e.value.min_tokens == 9 and e.value.max_tokens == 4


@pytest.mark.parametrize("kw", [dict(min_tokens=True), dict(min_tokens=None), dict(min_p=None), dict(min_p="x")])
def test_python_sampling_params_check_the_types(kw):
    with pytest.raises(InvalidArgumentError) as e:
        SamplingParams(**kw)
    assert e.value.param == next(iter(kw))


def test_old_messages_without_the_fields_still_decode():
    import msgspec

    old = msgspec.msgpack.encode({"max_tokens": 7, "temperature": 0.5})
    s = msgspec.msgpack.decode(old, type=SamplingParams)
    assert s.min_tokens == 0 and s.min_p == 0.0
    p = SamplingParams(max_tokens=9, min_tokens=9, min_p=0.25)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(p), type=SamplingParams) == p


VOCAB = ["a", "b", "c", "b", "d", "x"]  # token ids 1 and 3 both read "b"


def _decode(ids) -> str:
    return "".join(VOCAB[i] for i in ids)


def _text(ids, stop, min_tokens, streamed: bool) -> tuple[str, TextStream]:
    t = TextStream(_decode, stop, min_tokens=min_tokens)
    out = "".join(t.push([i]) for i in ids) if streamed else t.push(ids)
    return out + t.finish(), t


@pytest.mark.parametrize("streamed", [True, False])
def test_a_stop_string_in_the_first_min_tokens_tokens_does_not_end_the_text(streamed):
    ids = [0, 1, 2, 3, 4]  # "abcbd"
    assert _text(ids, ("b",), 0, streamed)[0] == "a"
    text, t = _text(ids, ("b",), 3, streamed)
    # the "b" of token 1 is within min_tokens 3; token 3's "b" is past them and ends the text
    assert text == "abc" and t.stopped and t.ids == [0, 1, 2] and t.tokens_to_stop() == 4
    text, t = _text(ids, ("b",), 4, streamed)
    assert text == "abcbd" and not t.stopped
    # a stop string completed past min_tokens cuts where it begins, as vLLM cuts it, even inside them
    text, t = _text(ids, ("cb",), 3, streamed)
    assert text == "ab" and t.stopped and t.tokens_to_stop() == 4


def test_with_min_tokens_the_stream_and_the_whole_text_agree():
    ids = [0, 1, 2, 3, 4, 1, 5, 1]
    for stop in (("b",), ("bd",), ("cb", "x"), ("b", "d")):
        for n in range(0, 9):
            assert _text(ids, stop, n, True)[0] == _text(ids, stop, n, False)[0], (stop, n)


def test_echo_with_max_tokens_0_refuses_min_tokens_against_the_0_sent():
    """Found in review: the message named max_tokens 1, the token generated for the prompt's logprobs."""
    body = json.dumps({"model": "m", "prompt": "hi", "echo": True, "logprobs": 1, "max_tokens": 0,
                       "min_tokens": 2}).encode()
    with pytest.raises(InvalidArgumentError, match=r"\[0, 0\], got 2") as e:
        oa.parse_completion(body)
    assert e.value.param == "min_tokens"
