"""OpenAI API details from a review of the front end (2026-11-30): explicit nulls for n, stream and echo are the
defaults; echo with max_tokens 0 scores the prompt (OpenAI's legacy completions, lm-eval's loglikelihood);
completions' top_logprobs hold the token's own logprob; a prompt whose text decodes to "" is still echoed with its
logprobs; a chat text part must be a string; a 405 names the allowed methods. Each failed before. The stand-in
controller of test_openai_logprobs_review.py behind the real HTTP API, with the demo model's tokenizer."""

from test_openai_logprobs_review import MODEL, Ctl, _events, _lp, _serve


def _post(body_by_path):
    """(status, json or text) of each (path, body) posted in turn."""
    async def go(c):
        out = []
        for path, body in body_by_path:
            r = await c.post(path, json=body)
            out.append((r.status, await r.json() if not body.get("stream") or r.status != 200 else await r.text()))
        return out
    return go


def test_nulls_for_n_stream_and_echo_are_the_defaults(model):
    ctl = Ctl(model, [5, 6], [_lp(-1.0)] * 2)
    got = _serve(ctl, _post([
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2, "n": None, "stream": None,
                             "echo": None}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                  "n": None, "stream": None}),
    ]))
    assert [s for s, _ in got] == [200, 200], got
    assert len(got[0][1]["choices"]) == 1 and got[0][1]["choices"][0]["text"] == model.tokenizer.decode([5, 6])
    assert len(got[1][1]["choices"]) == 1 and len(ctl.submitted) == 2


def test_echo_with_max_tokens_0_scores_the_prompt_and_generates_nothing(model):
    tok = model.tokenizer
    ids = tok.encode("the cat sat", add_special_tokens=True)
    ctl = Ctl(model, [5], [_lp(-1.0)], prompt_lp=_lp(-2.0))
    body = {"model": MODEL, "prompt": "the cat sat", "max_tokens": 0, "echo": True, "logprobs": 0}
    got = _serve(ctl, _post([
        ("/v1/completions", body),
        ("/v1/completions", {**body, "stream": True}),
        ("/v1/completions", {**body, "echo": False}),
    ]))
    status, r = got[0]
    assert status == 200, r
    choice = r["choices"][0]
    assert choice["text"] == "the cat sat" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["token_logprobs"] == [None] + [-2.0] * (len(ids) - 1)
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    assert r["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    assert ctl.submitted[0].sampling.max_tokens == 1 and ctl.submitted[0].sampling.prompt_logprobs == 0
    assert got[1][0] == 400 and got[1][1]["error"]["param"] == "stream"
    assert got[2][0] == 400 and got[2][1]["error"]["param"] == "max_tokens"
    assert len(ctl.submitted) == 1


def test_completion_top_logprobs_hold_the_tokens_own_logprob(model):
    tok = model.tokenizer
    word, other = tok.encode("hello", add_special_tokens=False)[1], tok.encode("world", add_special_tokens=False)[1]
    assert (tok.decode([word]), tok.decode([other])) == ("el", "or")
    # the sampled token is not among the alternatives (a sampled, unlikely token), and with logprobs 0 none are
    ctl = Ctl(model, [word], [_lp(-4.0, [(other, -0.1)])])
    got = _serve(ctl, _post([
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1, "logprobs": 1}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1, "logprobs": 1, "stream": True}),
    ]))
    lp = got[0][1]["choices"][0]["logprobs"]
    assert lp["top_logprobs"] == [{tok.decode([other]): -0.1, tok.decode([word]): -4.0}]
    streamed = [e["choices"][0]["logprobs"] for e in _events(got[1][1]) if e["choices"][0].get("logprobs")]
    assert [t for s in streamed for t in s["top_logprobs"]] == lp["top_logprobs"]
    ctl0 = Ctl(model, [word], [_lp(-4.0)])
    got0 = _serve(ctl0, _post([("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1,
                                                     "logprobs": 0})]))
    assert got0[0][1]["choices"][0]["logprobs"]["top_logprobs"] == [{tok.decode([word]): -4.0}]


def test_a_prompt_of_special_tokens_only_is_echoed_with_its_logprobs(model):
    tok = model.tokenizer
    prompt = [1, 2, 0]  # the demo tokenizer's special tokens: none has text
    assert tok.decode(prompt) == "" and all(tok.decode([t]) == "" for t in prompt)
    ctl = Ctl(model, [5], [_lp(-1.0)], prompt_lp=_lp(-2.0))
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 0}
    got = _serve(ctl, _post([("/v1/completions", body), ("/v1/completions", {**body, "stream": True})]))
    whole = got[0][1]["choices"][0]["logprobs"]["token_logprobs"]
    assert whole == [None, -2.0, -2.0, -1.0]
    streamed = [e["choices"][0]["logprobs"] for e in _events(got[1][1]) if e["choices"][0].get("logprobs")]
    assert [v for s in streamed for v in s["token_logprobs"]] == whole


def test_a_chat_text_part_must_be_a_string(model):
    ctl = Ctl(model, [5], [_lp(-1.0)])
    bodies = [{"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text",
                                                                                          "text": t}]}]}
              for t in (None, 5)]
    got = _serve(ctl, _post([("/v1/chat/completions", b) for b in bodies]))
    for status, r in got:
        assert status == 400 and r["error"]["param"] == "messages" and "'text' as a string" in r["error"]["message"]
    assert not ctl.submitted


def test_a_405_names_the_methods_the_path_takes(model):
    async def go(c):
        r = await c.get("/v1/completions")
        return r.status, r.headers.get("Allow"), await r.json()

    status, allow, body = _serve(Ctl(model, [5], [_lp(-1.0)]), go)
    assert status == 405 and allow is not None and "POST" in allow
    assert "GET /v1/completions" in body["error"]["message"]
