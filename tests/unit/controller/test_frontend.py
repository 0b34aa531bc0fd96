"""The front end shared by the HTTP API and warmserve.Cluster: prompt preparation with a real demo tokenizer, and
the one text iterator over a real controller request (Req) with its abort hook."""

import asyncio
import subprocess
import sys

import pytest

from warmserve.config import ModelSpec
from warmserve.controller import frontend
from warmserve.controller.frontend import TextGeneration, aprepare, prepare
from warmserve.controller.models import controller_model
from warmserve.controller.requests import Req
from warmserve.errors import InvalidArgumentError, PromptTooLongError, WarmServeError
from warmserve.protocol import SamplingParams

from controller_harness import demo_path

MODEL = "llama-20m"


@pytest.fixture(scope="module")
def model():
    return controller_model(ModelSpec(path=demo_path(MODEL)))


def test_cluster_api_does_not_import_aiohttp():
    code = ("import sys, warmserve.controller.cluster, warmserve.controller.launch, warmserve.controller.frontend; "
            "print('aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_prepare_text_chat_and_ids(model):
    ids = prepare(model, "hello world", max_tokens=4)
    assert ids == list(model.tokenizer.encode("hello world"))
    chat = prepare(model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat and isinstance(chat[0], int)
    assert prepare(model, [1, 2, 3], max_tokens=4) == [1, 2, 3]
    with pytest.raises(InvalidArgumentError) as e:
        prepare(model, [1, model.tokenizer.vocab_size], max_tokens=4)
    assert e.value.param == "prompt"
    with pytest.raises(PromptTooLongError) as e:
        prepare(model, [1] * model.max_context, max_tokens=1)
    assert e.value.prompt_tokens == model.max_context


def test_huge_text_is_refused_by_size_before_tokenising(model):
    """A text whose characters alone exceed what the context can hold is refused without tokenising it: the
    tokenizer would raise if it were called."""
    limit = (model.max_context - 16) * model.max_token_chars
    big = "a" * (limit + 1)

    class Untouchable:
        vocab_size = model.tokenizer.vocab_size

        def encode(self, text, add_special_tokens=False):
            raise AssertionError("tokenised a prompt that its size already rules out")

    guarded = type(model)(spec=model.spec, tokenizer=Untouchable(), max_context=model.max_context,
                          weight_bytes=model.weight_bytes, kv_bytes_per_token=model.kv_bytes_per_token,
                          max_token_chars=model.max_token_chars)
    for call in (lambda: prepare(guarded, big, max_tokens=16),
                 lambda: asyncio.run(aprepare(guarded, big, max_tokens=16)),
                 lambda: asyncio.run(aprepare(guarded, messages=[{"role": "user", "content": big}], max_tokens=16))):
        with pytest.raises(PromptTooLongError) as e:
            call()
        assert e.value.prompt_chars >= limit + 1 and e.value.max_prompt_chars <= limit
    # the bound is sound: a text at the limit that does fit tokenises to no more than the context allows
    assert len(model.tokenizer.encode("a" * limit)) >= 1


def test_long_text_is_tokenised_off_the_event_loop(model):
    text = "word " * (frontend.INLINE_TOKENIZE_CHARS // 5 + 100)
    seen = {}
    real = model.tokenizer

    class Recording:
        vocab_size = real.vocab_size

        def encode(self, t, add_special_tokens=False):
            import threading

            seen["thread"] = threading.current_thread()
            return real.encode(t, add_special_tokens=add_special_tokens)

    m = type(model)(spec=model.spec, tokenizer=Recording(), max_context=100_000, weight_bytes=model.weight_bytes,
                    kv_bytes_per_token=model.kv_bytes_per_token, max_token_chars=model.max_token_chars)

    async def go():
        import threading

        ids = await aprepare(m, text, max_tokens=4)
        return ids, threading.current_thread()

    ids, loop_thread = asyncio.run(go())
    assert ids == real.encode(text) and seen["thread"] is not loop_thread


def _req(aborted: list) -> Req:
    r = Req(1, MODEL, [1], SamplingParams(), timeout_s=60.0)
    r._abort_cb = aborted.append
    return r


def test_text_generation_cuts_at_a_stop_string_and_aborts(model):
    tok = model.tokenizer
    ids = tok.encode("one two three four five")

    async def go():
        aborted = []
        r = _req(aborted)
        gen = TextGeneration(r, tok.decode, (" three",))
        for i in ids:
            r.push([i])
        pieces = [p async for p in gen]
        return "".join(pieces), gen, aborted, r

    text, gen, aborted, r = asyncio.run(go())
    assert text == "one two" and gen.text.text == "one two"
    assert gen.finish_reason == "stop" and aborted == [r] and r.done
    # Every token came in one burst: usage counts those through the stop string, not those after it (found in
    # review: it counted all of them).
    through = len(tok.encode("one two three"))
    assert ids[:through] == tok.encode("one two three")
    assert r.generated == len(ids) > through and gen.completion_tokens == through


def test_text_generation_ends_with_the_request_and_raises_its_error(model):
    tok = model.tokenizer
    ids = tok.encode("alpha beta")

    async def go():
        r = _req([])
        gen = TextGeneration(r, tok.decode)
        r.push(ids)
        r.finish("length")
        whole = await gen.collect()
        r2 = _req([])
        gen2 = TextGeneration(r2, tok.decode)
        r2.push(ids[:1])
        r2.fail(WarmServeError("worker lost"))
        got = []
        with pytest.raises(WarmServeError):
            async for p in gen2:
                got.append(p)
        return whole, gen, got

    whole, gen, got = asyncio.run(go())
    assert whole == "alpha beta" and gen.finish_reason == "length" and gen.completion_tokens == len(ids)
    assert "".join(got) == tok.decode(ids[:1])
