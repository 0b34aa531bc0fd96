"""The max_tokens of a chat that sets none is the server's (SamplingParams.max_tokens_defaulted), so an instance
whose KV cache holds less than the context lowers it instead of refusing the chat; one the client set is its own."""

import json

from warmserve.controller.openai_api import fill_max_tokens, parse_chat

MESSAGES = [{"role": "user", "content": "hi"}]


def _chat(**fields):
    req, sampling = parse_chat(json.dumps({"model": "m", "messages": MESSAGES, **fields}).encode())
    return fill_max_tokens(req, sampling, max_context=2048, prompt_tokens=10)


def test_a_chat_without_max_tokens_gets_the_rest_of_the_context_marked_as_the_servers():
    s = _chat()
    assert (s.max_tokens, s.max_tokens_defaulted) == (2038, True)


def test_a_chat_with_max_tokens_keeps_its_own():
    for field in ("max_tokens", "max_completion_tokens"):
        s = _chat(**{field: 100})
        assert (s.max_tokens, s.max_tokens_defaulted) == (100, False)
