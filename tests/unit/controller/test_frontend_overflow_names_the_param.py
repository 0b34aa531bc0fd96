"""A prompt that does not fit the context beside a chat's max_completion_tokens is refused naming
max_completion_tokens, the parameter the client set. Found in review: the message told the client to lower
max_tokens, which it never sent (check_max_tokens named it; check_prompt and check_chars did not). The demo model's
real tokenizer and context, through prepare/aprepare and through the HTTP layer on a real socket."""

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller_harness import HttpController
from warmserve.controller.api import Api
from warmserve.controller.frontend import aprepare, prepare
from warmserve.errors import PromptTooLongError

MODEL = "llama-20m"
MCT = "max_completion_tokens"


def _names_only_mct(e: PromptTooLongError) -> None:
    assert MCT in e.message and "max_tokens" not in e.message, e.message


def test_a_chat_that_does_not_fit_beside_max_completion_tokens_names_it(model):
    ctx = model.max_context
    chat = [{"role": "user", "content": "tell me a story about a cat"}]
    n = len(prepare(model, messages=chat, max_tokens=1))
    # counted in tokens (check_prompt): the text alone fits the characters' bound
    with pytest.raises(PromptTooLongError) as e:
        prepare(model, messages=chat, max_tokens=ctx - n + 1, max_tokens_param=MCT)
    assert e.value.param == "messages" and e.value.prompt_tokens == n
    _names_only_mct(e.value)
    # refused by its characters before it is tokenised (check_chars), inline and off the loop
    long_chat = [{"role": "user", "content": "hi " * (ctx * model.max_token_chars)}]
    for call in (lambda: prepare(model, messages=long_chat, max_tokens=1, max_tokens_param=MCT),
                 lambda: asyncio.run(aprepare(model, messages=long_chat, max_tokens=1, max_tokens_param=MCT))):
        with pytest.raises(PromptTooLongError) as e:
            call()
        assert e.value.param == "messages" and e.value.prompt_chars > e.value.max_prompt_chars
        _names_only_mct(e.value)
    # the completions API's prompt is still told about max_tokens
    with pytest.raises(PromptTooLongError) as e:
        prepare(model, [5] * n, max_tokens=ctx - n + 1)
    assert "lower max_tokens" in e.value.message


def test_the_http_400_names_max_completion_tokens(model):
    ctl = HttpController(model)
    ctx = model.max_context
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "tell me a story about a cat"}]}

    async def go():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=30)) as c:
            out = []
            for extra in ({MCT: ctx - 3}, {MCT: ctx - 3, "max_tokens": 5}):
                r = await c.post("/v1/chat/completions", json={**chat, **extra})
                out.append((r.status, (await r.json())["error"]))
            return out

    for status, err in asyncio.run(go()):
        assert status == 400 and err["param"] == "messages" and err["code"] == "context_length_exceeded"
        assert MCT in err["message"] and "max_tokens" not in err["message"], err["message"]
    assert not ctl.submitted


def test_a_chat_that_set_no_limit_is_told_its_prompt_is_too_long_not_to_lower_max_tokens(model):
    """Found in review: a chat over the context with neither max_tokens nor max_completion_tokens was told
    "max_tokens asks for 1 more ...: lower max_tokens", a field it never sent and a value it cannot lower."""
    ctl = HttpController(model)
    ctx = model.max_context
    words = {"tokens": "a " * (ctx + 10), "chars": "hi " * (ctx * model.max_token_chars)}  # check_prompt, check_chars

    async def go():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=30)) as c:
            out = []
            for text in words.values():
                r = await c.post("/v1/chat/completions", json={"model": MODEL,
                                                               "messages": [{"role": "user", "content": text}]})
                out.append((r.status, (await r.json())["error"]))
            return out

    for status, err in asyncio.run(go()):
        assert status == 400 and err["param"] == "messages" and err["code"] == "context_length_exceeded"
        assert "max_tokens" not in err["message"].replace("no max_tokens was set", ""), err["message"]
        assert "shorten the prompt" in err["message"] and "lower" not in err["message"], err["message"]
    assert not ctl.submitted
