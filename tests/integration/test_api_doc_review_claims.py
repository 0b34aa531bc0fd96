"""Claims of docs/api.md checked against a live `warmserve serve` (CPU workers, the demo checkpoints), one server
for the module: values read as vLLM's pydantic models read them (a bool for a number, pydantic's words for a
bool), text content parts joined one per line, and choice i of a seeded request drawing from seed + i."""

from __future__ import annotations

import pytest

import serving

MODEL = serving.MODELS[0]  # llama-20m

server = serving.server_fixture("api_doc_claims", stop_timeout_s=30, log_level="WARNING", start_timeout_s=120,
                                restart_backoff_s=None)


def _post(server, path: str, body: dict):
    return serving.post_json(server[0] + path, body)


def test_logprobs_true_on_completions_is_one_alternative_as_vllm_reads_it(server):
    """Found in review: `"logprobs": true` on /v1/completions (the chat route's spelling) was a 400 "Expected
    `int | null`, got `bool`"; vLLM's pydantic model reads it as 1, and docs/api.md says values are read so."""
    status, body = _post(server, "/v1/completions", {"model": MODEL, "prompt": "hi there", "max_tokens": 3,
                                                     "temperature": 0, "logprobs": True})
    assert status == 200, body
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 3
    # one alternative, plus the chosen token where it is not that one (up to logprobs + 1, as OpenAI documents)
    assert all(1 <= len(top) <= 2 and tok in top for tok, top in zip(lp["tokens"], lp["top_logprobs"]))


@pytest.mark.parametrize("path,extra", [
    ("/v1/completions", {"max_tokens": True}),  # 1
    ("/v1/completions", {"temperature": False, "max_tokens": 2}),  # 0.0: greedy
    ("/v1/completions", {"stop_token_ids": [True], "max_tokens": 2}),
    ("/v1/completions", {"ignore_eos": "yes", "echo": "off", "max_tokens": 2}),
    ("/v1/chat/completions", {"logprobs": 1.0, "top_logprobs": True, "max_tokens": 2}),
    ("/v1/chat/completions", {"logprobs": "on", "max_tokens": 2}),
])
def test_values_pydantic_takes_are_taken(server, path, extra):
    """Before: each a 400 naming the field, where vLLM (pydantic's lax mode) takes it."""
    base = {"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    status, body = _post(server, path, {"model": MODEL, **base, **extra})
    assert status == 200, body
    if extra.get("max_tokens") is True:
        assert body["usage"]["completion_tokens"] == 1
    if "top_logprobs" in extra:
        assert len(body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 1


@pytest.mark.parametrize("extra,param", [
    ({"max_tokens": 5.5}, "max_tokens"),
    ({"ignore_eos": "maybe"}, "ignore_eos"),
    ({"ignore_eos": 0.5}, "ignore_eos"),
    ({"temperature": "hot"}, "temperature"),
    ({"stop_token_ids": [True] * 17}, "stop_token_ids[16]"),  # bounded: each conversion decodes the body again
])
def test_values_pydantic_refuses_are_still_400s_naming_the_field(server, extra, param):
    status, body = _post(server, "/v1/completions", {"model": MODEL, "prompt": "hi", **extra})
    assert status == 400 and body["error"]["param"] == param, body


def test_text_content_parts_are_joined_one_per_line(server):
    """A guard: docs/api.md says text parts are joined one per line, as vLLM joins them."""
    for model in serving.MODELS:
        parts = _post(server, "/tokenize", {"model": model, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]})
        joined = _post(server, "/tokenize", {"model": model, "messages": [{"role": "user", "content": "one\ntwo"}]})
        assert parts[0] == joined[0] == 200 and parts[1]["tokens"] == joined[1]["tokens"], (parts, joined)


def test_choice_i_of_a_seeded_request_draws_from_seed_plus_i(server):
    """A guard: docs/api.md says that with a seed, choice i uses seed + i."""
    body = {"model": MODEL, "prompt": "hi there", "max_tokens": 4, "ignore_eos": True}
    status, many = _post(server, "/v1/completions", {**body, "n": 3, "seed": 5})
    assert status == 200, many
    alone = [_post(server, "/v1/completions", {**body, "seed": 5 + i})[1]["choices"][0]["text"] for i in range(3)]
    assert [c["text"] for c in sorted(many["choices"], key=lambda c: c["index"])] == alone
