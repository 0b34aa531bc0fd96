"""The output's token ids and its logprobs agree when a stop string cuts the text, found in review: with a stop
string that begins at a token boundary, Cluster's token_ids (the text stream's ids) kept the stop string's tokens
while the logprobs left them out (3 ids, 2 logprobs). Rule (docs/api.md): ids and logprobs list the tokens that begin
before the stop string, one logprob per id; completion_tokens counts every token generated through the one that
completed it. Real controller requests (Req), fed as the controller feeds them: a worker's final event pushes its
tokens and ends the request in one step."""

import asyncio
import random

from warmserve.controller.frontend import TextGeneration
from warmserve.controller.requests import Req
from warmserve.protocol import SamplingParams, TokenLogprobs

MODEL = "llama-20m"


def chars(ids):
    return "".join(map(chr, ids))


async def _generate(ids, decode, stop, finish_reason, per_event, streamed):
    """A generation of ``ids`` ending with ``finish_reason``, ``per_event`` tokens per worker event; the consumer
    takes logprobs after each piece (``streamed``, as the streaming API does) or once at the end. Returns (text,
    generation, token ids of the logprobs taken)."""
    r = Req(1, MODEL, [1], SamplingParams(max_tokens=len(ids), logprobs=0), timeout_s=60.0)
    r._abort_cb = lambda req: None
    gen = TextGeneration(r, decode, stop)
    lps = [TokenLogprobs(logprob=-float(i + 1)) for i in range(len(ids))]

    async def produce():
        for at in range(0, len(ids), per_event):
            r.push(ids[at:at + per_event], lps[at:at + per_event])
            if at + per_event >= len(ids):
                r.finish(finish_reason)
            for _ in range(3):
                await asyncio.sleep(0)

    producer = asyncio.ensure_future(produce())
    taken, text = [], ""
    async for piece in gen:
        text += piece
        if streamed:
            taken += gen.take_logprobs()
    await producer
    taken += gen.take_logprobs()
    # each logprob is its own token's, in order, whatever was cut
    assert [lp.logprob for _, _, lp in taken] == [-float(i + 1) for i in range(len(taken))]
    return text, gen, [t for t, _, _ in taken]


def _run(*args):
    return asyncio.run(_generate(*args))


def test_a_stop_string_at_a_token_boundary_leaves_the_ids_as_it_leaves_the_logprobs():
    ids = [ord(c) for c in "abcdefgh"]
    for per_event in (1, 3, len(ids)):  # len(ids): tokens after the stop string came in the same event
        for streamed in (True, False):
            text, gen, taken = _run(ids, chars, ("cd",), "length", per_event, streamed)
            assert text == "ab" and gen.finish_reason == "stop", (per_event, streamed)
            assert gen.text.ids == taken == ids[:2], (per_event, streamed)
            assert gen.completion_tokens == len("abcd"), (per_event, streamed)


def test_a_stop_token_after_a_stop_string_in_the_same_event_is_cut_with_it():
    ids = [ord(c) for c in "ab END cd!"]  # "!": the stop token id that ended it on its engine
    for per_event in (1, 3, len(ids)):
        text, gen, taken = _run(ids, chars, ("END",), "stop", per_event, True)
        assert text == "ab " and gen.text.ids == taken == ids[:3], per_event
        assert gen.completion_tokens == len("ab END"), per_event


def test_with_a_real_tokenizer_ids_and_logprobs_agree_and_cover_the_text(model):
    tok = model.tokenizer
    gen_ids = tok.encode(" the quick brown fox jumps over the lazy dog while a cat naps on the warm mat",
                         add_special_tokens=False)
    texts = [tok.decode([t]) for t in gen_ids]
    rng = random.Random(11)
    checked = boundaries = 0
    for k in range(2, len(gen_ids) - 2):
        # a stop string that begins where token k begins (at a token boundary), and one that begins inside it
        for stop in (texts[k], texts[k][1:] + texts[k + 1][:1]):
            if not stop.strip():
                continue
            whole = tok.decode(gen_ids)
            through = next(j for j in range(1, len(gen_ids) + 1) if stop in tok.decode(gen_ids[:j]))
            at_boundary = whole.find(stop) == len(tok.decode(gen_ids[:k]))
            boundaries += at_boundary
            for per_event in (1, rng.choice((2, 3)), len(gen_ids)):
                text, gen, taken = _run(gen_ids, tok.decode, (stop,), "length", per_event, per_event != 1)
                assert gen.text.ids == taken, (stop, per_event)
                assert tok.decode(taken).startswith(text) and text == whole[:whole.find(stop)], (stop, per_event)
                assert gen.completion_tokens == through >= len(taken), (stop, per_event)
                if at_boundary:
                    assert taken == gen_ids[:k] and through == k + 1, (stop, per_event)
                checked += 1
    assert checked >= 20 and boundaries >= 5
