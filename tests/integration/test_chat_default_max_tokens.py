"""`warmserve serve` whose instances hold fewer KV tokens than the model's context (--max-kv-blocks 1: 256 tokens
of llama-20m's 2048): a chat that sets no max_tokens runs to what the instance holds (found in review: a 400 over
the max_tokens the server had filled in), and one that asks for more than fits is still refused, saying why."""

import serving

MODEL = "llama-20m"
KV_TOKENS = 256

server = serving.server_fixture("chat-default-max-tokens", models=(MODEL,), cpu_workers=1,
                                args=("--max-kv-blocks", "1"))


def _chat(url: str, **extra):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "ignore_eos": True, **extra}
    return serving.post_json(url + "/v1/chat/completions", body)


def test_a_chat_without_max_tokens_runs_to_the_kv_cap(server):
    url, _, _ = server
    status, out = _chat(url)
    assert status == 200, out
    usage = out["usage"]
    assert out["choices"][0]["finish_reason"] == "length"
    # the last token sampled is never fed back, so it needs no K/V: one past what the cache holds
    assert usage["prompt_tokens"] + usage["completion_tokens"] == KV_TOKENS + 1


def test_an_explicit_max_tokens_over_the_kv_cap_is_refused(server):
    url, _, _ = server
    status, out = _chat(url, max_tokens=1000)
    assert status == 400, out
    assert "KV blocks" in out["error"]["message"]
