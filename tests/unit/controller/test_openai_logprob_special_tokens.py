"""Found in review: a logprob's token text was the token's decode with special tokens skipped, so "<|im_end|>" ending
a generation was listed as "" (chat ``bytes`` []), and a completion's ``top_logprobs``, keyed by text, kept one of
its special alternatives under "" and dropped the rest. vLLM labels them with special tokens kept; the output text
still skips them. The stand-in controller of test_openai_logprobs_review.py behind the real HTTP API, with the
demo model's real tokenizer (ids 0, 1, 2: "<|endoftext|>", "<|im_start|>", "<|im_end|>")."""

import pytest

from test_openai_logprobs_review import MODEL, Ctl, _events, _lp, _serve

SPECIALS = {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"}


def _x(model) -> int:
    return model.tokenizer.encode(" x", add_special_tokens=False)[-1]


def _answers(model, kind: str, stream: bool) -> dict | list:
    """One choice of token ``_x`` then "<|im_end|>", each with every special token among its 5 alternatives."""
    x = _x(model)
    alts = [(0, -5.0), (1, -6.0), (2, -7.0), (x, -1.0), (x + 1, -8.0)]
    gen = Ctl(model, [x, 2], [_lp(-1.0, alts), _lp(-7.0, alts)])
    if kind == "chat":
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": True,
                "top_logprobs": 5, "stream": stream}
    else:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "logprobs": 5, "stream": stream}

    async def go(c):
        r = await c.post(f"/v1/{'chat/' if kind == 'chat' else ''}completions", json=body)
        assert r.status == 200, await r.text()
        return _events(await r.text()) if stream else (await r.json())["choices"][0]

    return _serve(gen, go)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_list_special_tokens_by_their_text_and_bytes(model, stream):
    got = _answers(model, "chat", stream)
    if stream:
        content = [e for c in got for ch in c["choices"] if ch.get("logprobs") for e in ch["logprobs"]["content"]]
        text = "".join(ch["delta"].get("content") or "" for c in got for ch in c["choices"])
    else:
        content, text = got["logprobs"]["content"], got["message"]["content"]
    x = model.tokenizer.decode([_x(model)])
    assert text == x  # the output text skips it
    assert [e["token"] for e in content] == [x, "<|im_end|>"]
    assert content[1]["bytes"] == list(b"<|im_end|>")
    for e in content:
        tops = {t["token"]: t for t in e["top_logprobs"]}
        assert set(SPECIALS.values()) <= tops.keys() and len(tops) == 5
        assert tops["<|im_start|>"]["bytes"] == list(b"<|im_start|>")


@pytest.mark.parametrize("stream", [False, True])
def test_completion_top_logprobs_keep_each_special_alternative_under_its_own_key(model, stream):
    got = _answers(model, "completion", stream)
    if stream:
        lps = [ch["logprobs"] for c in got for ch in c["choices"] if ch.get("logprobs")]
        tokens = [t for lp in lps for t in lp["tokens"]]
        tops = [t for lp in lps for t in lp["top_logprobs"]]
    else:
        tokens, tops = got["logprobs"]["tokens"], got["logprobs"]["top_logprobs"]
    assert tokens == [model.tokenizer.decode([_x(model)]), "<|im_end|>"]
    for top in tops:
        assert len(top) == 5 and "" not in top  # before: the three specials were one key "" (the likeliest's)
        assert {k: top[k] for k in SPECIALS.values()} == {"<|endoftext|>": -5.0, "<|im_start|>": -6.0,
                                                          "<|im_end|>": -7.0}
