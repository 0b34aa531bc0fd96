"""What an ordinary OpenAI client hit in the review of 2026-12-05 (the API against vLLM's), on a real socket with
the demo model's tokenizer: a client's X-Request-Id as the request's id, the event stream's charset, a completion's
``"max_tokens": null``, lax JSON types and ``stream_options`` as vLLM reads them. The controller is
test_http_api_ids_and_errors.py's stand-in."""

import json
import logging

import pytest

from test_http_api_ids_and_errors import MODEL, REQUEST_ID_HEADER, Ctl, _access_lines, _serve


def test_a_clients_request_id_is_taken_and_a_bad_one_replaced(model, caplog):
    ctl = Ctl(model, tokens=model.tokenizer.encode(" once", add_special_tokens=False))
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def go(c):
        out = []
        for given in ("trace-7f3a:01", "x" * 129, "has space", ""):
            r = await c.post("/v1/chat/completions", json=chat, headers={"X-Request-Id": given})
            out.append((r.status, r.headers[REQUEST_ID_HEADER], (await r.json())["id"]))
        r = await c.get("/health", headers={"X-Request-Id": "probe-1"})
        out.append((r.status, r.headers[REQUEST_ID_HEADER], None))
        return out

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        got = _serve(ctl, go)
    assert [s for s, _, _ in got] == [200] * 5
    assert got[0][1] == got[0][2] == "chatcmpl-trace-7f3a:01"
    for _, header, body_id in got[1:4]:  # too long, not visible ASCII, empty: a fresh id
        assert header == body_id and header.startswith("chatcmpl-") and "x" * 20 not in header and " " not in header
    assert got[4][1] == "req-probe-1"
    assert [line.rsplit(" id=", 1)[1] for line in _access_lines(caplog)] == [h for _, h, _ in got]


def _stream_events(text: str) -> list[dict]:
    return [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]


def test_a_stream_is_utf8_and_stream_options_reads_as_vllm_reads_it(model):
    """Found in review: `requests` decodes text/* without a charset as ISO-8859-1, so streamed non-ASCII text came
    out garbled; ``"stream_options": {}`` sent no usage, where vLLM's include_usage defaults to true."""
    ctl = Ctl(model, tokens=model.tokenizer.encode(" caf\u00e9", add_special_tokens=False))
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": True}

    async def go(c):
        out = []
        for options in ({}, {"include_usage": False}, {"continuous_usage_stats": True}):
            r = await c.post("/v1/completions", json={**body, "stream_options": options})
            out.append((r.status, r.headers["Content-Type"], await r.text()))
        r = await c.post("/v1/completions", json={**body, "stream": False, "stream_options": {}})
        out.append((r.status, None, await r.text()))
        return out

    (s0, ctype, text), (s1, _, text_off), (s2, _, refused), (s3, _, not_streamed) = _serve(ctl, go)
    assert s0 == s1 == 200 and ctype == "text/event-stream; charset=utf-8"
    events = _stream_events(text)
    assert "caf\u00e9" in "".join(e["choices"][0]["text"] for e in events if e["choices"])
    # {} asks for the usage chunk (vLLM's include_usage defaults to true); false leaves it out
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == len(ctl.tokens)
    assert all("usage" not in e for e in _stream_events(text_off))
    assert s2 == 400 and json.loads(refused)["error"]["param"] == "stream_options.continuous_usage_stats"
    assert s3 == 400 and json.loads(not_streamed)["error"]["param"] == "stream_options"


def test_a_completions_null_max_tokens_runs_to_the_end_of_the_context(model):
    """Left out, a completion's max_tokens is 16 (OpenAI's legacy default); an explicit null is the rest of the
    context, as vLLM takes it (found in review: null was cut at 16). A prompt that leaves no room for the one token
    a null must generate names no max_tokens the client never set."""
    ctl = Ctl(model, tokens=model.tokenizer.encode(" ok", add_special_tokens=False))

    async def go(c):
        for extra in ({}, {"max_tokens": None}, {"max_tokens": 5.0}):
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", **extra})
            assert r.status == 200, await r.text()
        long = list(range(10, 10 + model.max_context))
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": long, "max_tokens": None})
        return r.status, await r.json()

    status, body = _serve(ctl, go)
    prompt_tokens = len(ctl.submitted[0].prompt_ids)
    limits = [r.sampling.max_tokens for r in ctl.submitted]
    assert limits == [16, model.max_context - prompt_tokens, 5]
    assert [r.sampling.max_tokens_defaulted for r in ctl.submitted] == [False, True, False]
    assert status == 400 and body["error"]["param"] == "prompt", body
    assert "no max_tokens was set" in body["error"]["message"], body


@pytest.mark.parametrize("path,field,value,ok", [
    ("/v1/completions", "max_tokens", 5.0, True),
    ("/v1/completions", "temperature", "0.5", True),
    ("/v1/completions", "stream", "false", True),
    ("/v1/chat/completions", "logprobs", 1, True),
    ("/v1/completions", "max_tokens", 5.5, False),
    ("/v1/completions", "temperature", "hot", False),
])
def test_json_types_are_read_as_laxly_as_vllm_reads_them(model, path, field, value, ok):
    """vLLM's pydantic models take 5.0 for an integer, "0.5" for a number, 1 for true; msgspec's strict decoding
    refused them (found in review: a count computed as a float was a 400). A fraction or a word still is one."""
    ctl = Ctl(model, tokens=model.tokenizer.encode(" ok", add_special_tokens=False))
    base = ({"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]})

    async def go(c):
        r = await c.post(path, json={"model": MODEL, "max_tokens": 2, **base, field: value})
        return r.status, await r.json()

    status, body = _serve(ctl, go)
    if ok:
        assert status == 200, body
    else:
        assert status == 400 and body["error"]["param"] == field, body



def test_more_than_four_stop_strings_are_taken_as_vllm_takes_them():
    """OpenAI's limit of 4 refused the 5-10 stop strings evaluation harnesses send to vLLM (found in review); the
    limit is now MAX_STOP_STRINGS, past which it is still a 400 naming stop."""
    from warmserve.controller import openai_api as oa
    from warmserve.errors import InvalidArgumentError
    from warmserve.sampling import MAX_STOP_STRINGS

    stops = ["\n\n", "Q:", "A:", "###", "</s>"]
    _, s = oa.parse_completion(json.dumps({"model": MODEL, "prompt": "x", "stop": stops}).encode())
    assert s.stop == tuple(stops)
    with pytest.raises(InvalidArgumentError, match=f"at most {MAX_STOP_STRINGS} stop") as e:
        oa.parse_completion(json.dumps({"model": MODEL, "prompt": "x",
                                        "stop": [str(i) for i in range(MAX_STOP_STRINGS + 1)]}).encode())
    assert e.value.param == "stop"


def test_model_cards_carry_vllms_root_and_parent(model):
    """Clients written for vLLM read a card's root (found in review: missing); it is the served name, not the
    checkpoint's folder, which would show the server's paths."""

    async def go(c):
        r = await c.get("/v1/models")
        return (await r.json())["data"]

    (card,) = _serve(Ctl(model), go)
    assert card["id"] == card["root"] == MODEL and card["parent"] is None
    assert card["max_model_len"] == model.max_context


def test_a_body_refused_over_a_field_is_logged_with_its_model(model, caplog):
    """Found in review: a 400 over a bad field logged model=-, though the body named its model."""
    bodies = [("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": -3}, MODEL),
              ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, MODEL),
              ("/v1/completions", {"prompt": "hi"}, "-"), ("/v1/completions", {"model": 5, "prompt": "hi"}, "-")]

    async def go(c):
        return [(await c.post(path, json=body)).status for path, body, _ in bodies]

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        statuses = _serve(Ctl(model), go)
    assert statuses == [400] * 4
    assert [line.split(" model=", 1)[1].split(" ", 1)[0] for line in _access_lines(caplog)] == [m for *_, m in bodies]
