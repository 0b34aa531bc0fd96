"""Found in review: an echoed string prompt is the client's own string (as vLLM and OpenAI echo it), but its
text_offset values were taken from its tokens' decode, which differs from it when special tokens are skipped
("<|im_start|>user\\n...": every later offset 12 characters early) or a normalizer rewrote it (NFC turns "e\\u0301"
into one character). Each echoed token's offset must point at its text in the echoed string, streamed or not. The
stand-in controller of test_openai_logprobs_review.py behind the real HTTP API, with the demo model's tokenizer."""

import pytest

from test_openai_logprobs_review import FFFD, MODEL, Ctl, _events, _lp, _serve


def _echo_offsets(model, prompt):
    """(text, tokens, text_offset) of the echoed prompt, whole and streamed."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 0}

    async def go(c):
        r = await c.post("/v1/completions", json=body)
        choice = (await r.json())["choices"][0]
        out = [(choice["text"], choice["logprobs"]["tokens"], choice["logprobs"]["text_offset"])]
        r = await c.post("/v1/completions", json={**body, "stream": True})
        chunks = [e["choices"][0] for e in _events(await r.text())]
        lps = [c["logprobs"] for c in chunks if c["logprobs"]]
        out.append(("".join(c["text"] for c in chunks), [t for lp in lps for t in lp["tokens"]],
                    [o for lp in lps for o in lp["text_offset"]]))
        return out

    gen = model.tokenizer.encode(" x", add_special_tokens=False)[-1:]
    return _serve(Ctl(model, gen, [_lp(-1.0)], prompt_lp=_lp(-1.0)), go)


@pytest.mark.parametrize("prompt", ["<|im_start|>user\nhello world<|im_end|>", "cafe\u0301 ok", "plain text"])
def test_echoed_prompt_offsets_point_into_the_echoed_string(model, prompt):
    n_prompt = len(model.tokenizer.encode(prompt, add_special_tokens=True))
    for text, tokens, offsets in _echo_offsets(model, prompt):
        assert text.startswith(prompt)
        offsets, tokens = offsets[:n_prompt], tokens[:n_prompt]
        assert offsets == sorted(offsets) and max(offsets) <= len(prompt)
        for tok, at in zip(tokens, offsets):
            if FFFD not in tok:  # a byte of a character begins where the character does
                assert text[at:at + len(tok)] == tok, (tokens, offsets)
