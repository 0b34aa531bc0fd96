"""How a generation's end shapes its text and usage, found in review: the EOS or stop token id that ended a
request is a token of it but not text (vLLM leaves it out); usage counts through the token that completed a stop
string even when a prefix ends inside a multi-byte character; and with overlapping stop strings, the cut depends on
the text alone, not on how many tokens a slow reader had coalesced. Real controller requests (Req) are fed as the
controller feeds them: a worker's final event pushes its tokens and ends the request in one step."""

import asyncio

from warmserve.controller.frontend import TextGeneration
from warmserve.controller.requests import Req
from warmserve.controller.textstream import TextStream
from warmserve.protocol import SamplingParams, TokenLogprobs

MODEL = "llama-20m"


def chars(ids):
    return "".join(map(chr, ids))


def utf8(ids):
    """Token ids that are bytes: a character split over tokens decodes as U+FFFD until its last byte comes."""
    return bytes(ids).decode("utf-8", errors="replace")


async def _generate(ids, decode, stop, finish_reason, per_event, streamed):
    """A generation of ``ids`` ending with ``finish_reason``, ``per_event`` tokens per worker event (the last
    event carries the last token and ends the request, as the controller's _on_event does); the consumer keeps up
    after each event (``streamed``) or reads once it all came. Returns (text, generation, logprob token ids)."""
    r = Req(1, MODEL, [1], SamplingParams(max_tokens=len(ids), logprobs=0), timeout_s=60.0)
    r._abort_cb = lambda req: None
    gen = TextGeneration(r, decode, stop)
    lps = [TokenLogprobs(logprob=-float(i + 1)) for i in range(len(ids))]

    async def produce():
        for at in range(0, len(ids), per_event):
            r.push(ids[at:at + per_event], lps[at:at + per_event])
            if at + per_event >= len(ids):
                r.finish(finish_reason)
            if streamed:
                for _ in range(3):
                    await asyncio.sleep(0)

    if streamed:
        producer = asyncio.ensure_future(produce())
        pieces = [p async for p in gen]
        await producer
    else:
        await produce()
        pieces = [p async for p in gen]
    taken = [t for t, _, _ in gen.take_logprobs()]
    assert "".join(pieces) == gen.text.text
    return gen.text.text, gen, taken


def _run(*args):
    return asyncio.run(_generate(*args))


def test_the_token_that_ended_a_request_on_its_engine_is_no_text_but_counts():
    ids = [ord(c) for c in "hello!"]  # "!": an EOS the tokenizer does not mark special, or a stop_token_ids id
    for per_event in (1, 2, len(ids)):
        for streamed in (True, False):
            text, gen, taken = _run(ids, chars, (), "stop", per_event, streamed)
            assert text == "hello", (per_event, streamed)
            assert gen.text.ids == ids and gen.completion_tokens == len(ids) and gen.finish_reason == "stop"
            assert taken == ids  # its logprob is listed, as vLLM lists it
            # Ended by length, the last token is text.
            assert _run(ids, chars, (), "length", per_event, streamed)[0] == "hello!"


def test_a_stop_token_after_a_split_character_leaves_the_character_whole():
    ids = list("aé".encode()) + [ord("!")]
    for per_event in (1, 2, len(ids)):
        assert _run(ids, utf8, (), "stop", per_event, True)[0] == "aé"


def test_a_stop_string_before_the_stop_token_still_cuts_and_counts_through_it():
    ids = [ord(c) for c in "ab END cd!"]
    for per_event in (1, 3, len(ids)):
        text, gen, _ = _run(ids, chars, ("END",), "stop", per_event, True)
        assert text == "ab " and gen.completion_tokens == len("ab END")


def test_usage_counts_through_the_token_that_completed_a_stop_string_ending_in_a_multibyte_character():
    text = "kaloé🙂qué🙂de"
    ids = list(text.encode())
    through = len("kaloé🙂qué🙂".encode())
    for per_event in (1, 4, len(ids)):
        out, gen, _ = _run(ids, utf8, ("ué🙂",), "length", per_event, True)
        assert out == "kaloé🙂q" and gen.finish_reason == "stop"
        assert gen.text.tokens_to_stop() == through and gen.completion_tokens == through, per_event


def test_usage_with_a_real_tokenizer_whose_tokens_split_characters(model):
    tok = model.tokenizer
    ids = tok.encode(" kaloé🙂qué🙂de", add_special_tokens=False)
    through = next(k for k in range(1, len(ids) + 1) if "ué🙂" in tok.decode(ids[:k]))
    t = TextStream(tok.decode, ("ué🙂",))
    for i in ids:
        t.push([i])
        if t.stopped:
            break
    assert t.stopped and t.tokens_to_stop() == through


def test_overlapping_stop_strings_cut_alike_however_the_tokens_were_coalesced():
    ids = [ord(c) for c in "xy abcd tail"]
    results = set()
    for per_event in (1, 2, 5, len(ids)):
        for streamed in (True, False):
            text, gen, _ = _run(ids, chars, ("abcd", "bc"), "length", per_event, streamed)
            results.add((text, gen.text.stop_len, gen.completion_tokens))
    # "bc" is complete at "c", before "abcd" is: a token-by-token reader stops there.
    assert results == {("xy a", 2, len("xy abc"))}


def test_equal_ends_take_the_stop_string_that_starts_first():
    t = TextStream(chars, ("cd", "bcd"))
    assert t.push([ord(c) for c in "abcdef"]) + t.finish() == "a" and t.stop_len == 3
