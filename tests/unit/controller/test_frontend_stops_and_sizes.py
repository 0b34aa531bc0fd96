"""The front end's fixes from the API review, with the demo model's real tokenizer and real controller requests
(Req): streamed logprobs stop where the text stops, a token list is refused by its length before its items are
walked, and a chat of many messages is rendered off the event loop."""

import asyncio
import random
import threading

import pytest

from warmserve.controller.frontend import TextGeneration, aprepare, prepare
from warmserve.controller.requests import Req
from warmserve.controller.textstream import TextStream
from warmserve.errors import InvalidArgumentError, PromptTooLongError
from warmserve.protocol import SamplingParams, TokenLogprobs

MODEL = "llama-20m"


def _lp(i: int) -> TokenLogprobs:
    return TokenLogprobs(logprob=-float(i + 1))


async def _run(ids: list[int], decode, stop: tuple[str, ...], bursts: list[int], streamed: bool):
    """A generation of ``ids`` (with logprobs) arriving in ``bursts`` of tokens; its logprobs taken after every
    piece of text (as the streaming API does) or once at the end. Returns (text, token ids of the logprobs)."""
    r = Req(1, MODEL, [1], SamplingParams(max_tokens=len(ids), logprobs=0), timeout_s=60.0)
    r._abort_cb = lambda req: None
    gen = TextGeneration(r, decode, stop)

    async def produce():
        at = 0
        for n in bursts:
            r.push(ids[at:at + n], [_lp(i) for i in range(at, at + n)])
            at += n
            for _ in range(3):  # let the consumer take what this burst released
                await asyncio.sleep(0)
        r.finish("length")

    producer = asyncio.ensure_future(produce())
    taken, text = [], ""
    async for piece in gen:
        text += piece
        if streamed:
            taken += gen.take_logprobs()
    await producer
    taken += gen.take_logprobs()
    assert [lp.logprob for _, _, lp in taken] == [-float(i + 1) for i in range(len(taken))]
    return text, [t for t, _, _ in taken]


def _bursts(n: int, rng: random.Random) -> list[int]:
    out = []
    while n > 0:
        out.append(min(n, rng.choice((1, 1, 1, 2, 3))))
        n -= out[-1]
    return out


def test_streamed_logprobs_leave_out_the_tokens_of_a_stop_string_as_the_whole_answer_does(model):
    """Found in review: the stream handed out the logprobs of tokens whose text was held back as a possible stop
    string, then cut away; the non-streamed answer did not list them."""
    chars = lambda ids: "".join(chr(i) for i in ids)  # noqa: E731
    ids = [ord(c) for c in "abcdefgh"]
    assert asyncio.run(_run(ids, chars, ("cd",), [1] * 8, streamed=True)) == ("ab", ids[:2])
    assert asyncio.run(_run(ids, chars, ("cd",), [1] * 8, streamed=False)) == ("ab", ids[:2])
    assert asyncio.run(_run(ids, chars, ("xy",), [1] * 8, streamed=True)) == ("abcdefgh", ids)

    tok = model.tokenizer
    rng = random.Random(7)
    gen_ids = tok.encode(" the quick brown fox jumps over the lazy dog while a cat naps on the warm mat",
                         add_special_tokens=False)
    texts = [tok.decode([t]) for t in gen_ids]
    checked = 0
    for k in range(1, len(gen_ids) - 2):
        if not texts[k + 1] or not texts[k + 2]:
            continue
        stop = (texts[k + 1] + texts[k + 2][:1],)  # a stop string that ends inside a token
        for _ in range(3):
            bursts = _bursts(len(gen_ids), rng)
            whole = asyncio.run(_run(gen_ids, tok.decode, stop, bursts, streamed=False))
            assert asyncio.run(_run(gen_ids, tok.decode, stop, bursts, streamed=True)) == whole, (stop, bursts)
            assert tok.decode(whole[1]).startswith(whole[0])  # the tokens kept cover the text kept
            checked += 1
    assert checked >= 10


def test_token_starts_follow_the_text_through_split_characters():
    """A character whose bytes come over several tokens begins with the first of them: a stop right after it keeps
    every one of its tokens."""
    dec = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731
    e_acute = list("\u00e9".encode())
    t = TextStream(dec, ("z",))
    for burst in ([ord("a")], e_acute[:1], e_acute[1:] + [ord("b")], [ord("z")]):
        t.push(burst)
    assert t.stopped and t.text == "a\u00e9b"
    assert t.starts == [0, 1, 1, 2, 3]


def test_a_token_list_over_the_context_is_refused_before_its_items_are_looked_at(model):
    ctx = model.max_context
    with pytest.raises(PromptTooLongError) as e:
        prepare(model, [1] * ctx + [object(), "x", -5], max_tokens=1)
    assert e.value.prompt_tokens == ctx + 3
    for bad in ([1, "2"], [1, 2.0], [True, 1]):
        with pytest.raises(InvalidArgumentError, match="token ids") as e:
            prepare(model, bad, max_tokens=1)
        assert not isinstance(e.value, PromptTooLongError)
    import numpy as np

    assert prepare(model, np.array([1, 2, 3]), max_tokens=1) == [1, 2, 3]


def test_a_chat_of_many_short_messages_is_rendered_off_the_event_loop(model):
    """Found in review: 400k empty messages have no text to measure, so the chat template rendered them on the
    event loop, stalling every other request for seconds."""
    real = model.tokenizer
    seen = {}

    class Recording:
        vocab_size = real.vocab_size

        def apply_chat_template(self, messages, add_generation_prompt=True):
            seen["thread"] = threading.current_thread()
            return real.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

        def encode(self, text, add_special_tokens=False):
            return real.encode(text, add_special_tokens=add_special_tokens)

    m = type(model)(spec=model.spec, tokenizer=Recording(), max_context=model.max_context,
                    weight_bytes=model.weight_bytes, kv_bytes_per_token=model.kv_bytes_per_token,
                    max_token_chars=model.max_token_chars)
    many = [{"role": "user", "content": ""}] * 400  # no text, and more messages than a chat rendered inline

    async def go():
        loop_thread = threading.current_thread()
        await aprepare(m, messages=many[:2], max_tokens=1)
        assert seen.pop("thread") is loop_thread  # a short chat stays inline: no thread hop
        with pytest.raises(PromptTooLongError) as e:
            await aprepare(m, messages=many * 100, max_tokens=1)
        assert seen.pop("thread") is not loop_thread and e.value.param == "messages"
        ids = await aprepare(m, messages=many, max_tokens=1)
        assert ids and seen.pop("thread") is not loop_thread

    asyncio.run(go())
