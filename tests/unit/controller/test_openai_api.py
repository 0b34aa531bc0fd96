import json

import pytest

from warmserve.controller import openai_api as oa
from warmserve.controller.frontend import plain_chat_prompt
from warmserve.controller.errors import OverloadedError, TooManyRequestsError
from warmserve.errors import InvalidArgumentError, PromptTooLongError, UnknownModelError, WorkerLostError
from warmserve.protocol import SamplingParams


def body(**kw) -> bytes:
    return json.dumps(kw).encode()


def test_completion_defaults_and_fields():
    req, s = oa.parse_completion(body(model="m", prompt="hi", max_tokens=5, temperature=0, top_p=0.5, seed=3,
                                      stop=["\n"], stream=True, stream_options={"include_usage": True},
                                      presence_penalty=0.0))
    assert req.model == "m" and req.prompt == "hi" and req.stream and req.stream_options.include_usage
    assert s == SamplingParams(max_tokens=5, temperature=0.0, top_p=0.5, seed=3, stop=("\n",))
    _, s = oa.parse_completion(body(model="m", prompt=[1, 2, 3]))
    assert s.max_tokens == oa.DEFAULT_MAX_TOKENS and s.temperature == 1.0 and s.stop == ()


def test_chat_max_completion_tokens_wins_and_parts():
    req, s = oa.parse_chat(body(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                   {"type": "text", "text": "b"}]}],
                                max_tokens=3, max_completion_tokens=7, stop="x"))
    assert s.max_tokens == 7 and s.stop == ("x",)
    assert oa.chat_dicts(req) == [{"role": "user", "content": "a\nb"}]  # one per line, as vLLM joins them


@pytest.mark.parametrize("logprobs", [None, False])
def test_chat_top_logprobs_0_without_logprobs_is_the_neutral_default(logprobs):
    """Found in review: a 400 "top_logprobs needs logprobs=true", where vLLM (whose own default it is) takes it."""
    _, s = oa.parse_chat(body(model="m", messages=[{"role": "user", "content": "a"}], top_logprobs=0,
                              **({} if logprobs is None else {"logprobs": logprobs})))
    assert s.logprobs is None


@pytest.mark.parametrize("raw,param", [
    (b"{not json", None),
    (b"", None),
    (body(prompt="x"), None),                       # model missing
    (body(model="m", prompt="x", max_tokens="a"), "max_tokens"),
    (body(model="m", prompt="x", max_tokens=0), "max_tokens"),
    (body(model="m", prompt="x", temperature=3), "temperature"),
    (body(model="m", prompt="x", top_p=0), "top_p"),
    (body(model="m", prompt="x", n=17), "n"),
    (body(model="m", prompt="x", n=0), "n"),
    (body(model="m", prompt="x", logprobs=21), "logprobs"),
    (body(model="m", prompt="x", frequency_penalty=2.5), "frequency_penalty"),
    (body(model="m", prompt="x", repetition_penalty=0), "repetition_penalty"),
    (body(model="m", prompt="x", logit_bias={"5": 10}), "logit_bias"),
    (body(model="m", prompt="x", suffix="tail"), "suffix"),
    (body(model="m", prompt="x", response_format={"type": "json_object"}), "response_format"),
    (body(model="m", prompt="x", best_of=3), "best_of"),
    (body(model="m", prompt=["a", "b"]), "prompt"),
    (body(model="m", prompt="x", stop=[str(i) for i in range(65)]), "stop"),  # 5 are fine, as in vLLM
    (body(model="m", prompt="x", stop=[""]), "stop"),
    # a seed beyond 64 bits cannot travel in MessagePack nor seed the sampler: refused at parse time
    (body(model="m", prompt="x", seed=2 ** 64), "seed"),
    (body(model="m", prompt="x", seed=-(2 ** 63) - 1), "seed"),
])
def test_bad_completion_requests_are_400(raw, param):
    with pytest.raises(InvalidArgumentError) as e:
        oa.parse_completion(raw)
    status, b = oa.error_from_exception(e.value)
    assert status == 400
    assert set(b["error"]) == {"message", "type", "param", "code"} and b["error"]["type"] == "invalid_request_error"
    if param:
        assert b["error"]["param"] == param


@pytest.mark.parametrize("fields,param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    # found in review: an assistant turn's tool calls were dropped from the prompt without a word
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages"),
    ({"messages": [{"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": "{}"}}]},
     "messages"),
    ({"messages": [{"role": "user", "content": "x", "tool_call_id": "c1"}]}, "messages"),
    # found in review: vLLM's extensions below were dropped without a word (the stop string left out, special tokens
    # skipped, the template's arguments unused)
    ({"include_stop_str_in_output": True}, "include_stop_str_in_output"),
    ({"skip_special_tokens": False}, "skip_special_tokens"),
    ({"spaces_between_special_tokens": False}, "spaces_between_special_tokens"),
    ({"use_beam_search": True}, "use_beam_search"),
    ({"allowed_token_ids": [1, 2]}, "allowed_token_ids"),
    ({"bad_words": ["x"]}, "bad_words"),
    ({"truncate_prompt_tokens": 8}, "truncate_prompt_tokens"),
    ({"chat_template": "{{ messages }}"}, "chat_template"),
    ({"chat_template_kwargs": {"enable_thinking": False}}, "chat_template_kwargs"),
    ({"add_generation_prompt": False}, "add_generation_prompt"),
    ({"continue_final_message": True}, "continue_final_message"),
])
def test_unsupported_chat_fields_and_roles_are_400_naming_the_field(fields, param):
    with pytest.raises(InvalidArgumentError) as e:
        oa.parse_chat(body(**{"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}))
    assert oa.error_from_exception(e.value)[1]["error"]["param"] == param
    if "tool" in str(fields.get("messages", "")) or "function_call" in str(fields.get("messages", "")):
        assert "tool calling is not supported" in str(e.value)


def test_neutral_values_of_unsupported_fields_and_new_fields_pass():
    req, s = oa.parse_chat(body(model="m", messages=[{"role": "developer", "content": "be brief"},
                                                     {"role": "user", "content": "hi"}],
                                tools=[], tool_choice="none", response_format={"type": "text"}, logit_bias={},
                                logprobs=True, top_logprobs=5, n=3, presence_penalty=0.5, frequency_penalty=-0.5,
                                repetition_penalty=1.2, stop_token_ids=[7], max_completion_tokens=9,
                                include_stop_str_in_output=False, skip_special_tokens=True, chat_template_kwargs={},
                                add_generation_prompt=True, continue_final_message=False, bad_words=[]))
    assert (s.logprobs, s.presence_penalty, s.frequency_penalty, s.repetition_penalty, s.stop_token_ids,
            s.max_tokens, req.n) == (5, 0.5, -0.5, 1.2, (7,), 9, 3)
    req, _ = oa.parse_chat(body(model="m", messages=[{"role": "assistant", "content": "ok", "tool_calls": []}]))
    assert oa.chat_dicts(req) == [{"role": "assistant", "content": "ok"}]
    _, s = oa.parse_chat(body(model="m", messages=[{"role": "user", "content": "hi"}], logprobs=True))
    assert s.logprobs == 0
    _, s = oa.parse_completion(body(model="m", prompt="x", logprobs=0))
    assert s.logprobs == 0
    _, s = oa.parse_completion(body(model="m", prompt="x", logprobs=2, echo=True))
    assert (s.logprobs, s.prompt_logprobs) == (2, 2)


def test_bad_chat_requests_are_400():
    for raw in (body(model="m", messages=[]), body(model="m", messages=[{"role": "user",
                                                                          "content": [{"type": "image_url"}]}])):
        with pytest.raises(InvalidArgumentError):
            req, _ = oa.parse_chat(raw)
            oa.chat_dicts(req)


def test_error_mapping():
    cases = [
        (UnknownModelError("no such model", param="model"), 404, "model_not_found"),
        (PromptTooLongError("too long", param="prompt"), 400, "context_length_exceeded"),
        (PromptTooLongError("max_tokens leaves no room", param="max_tokens"), 400, "context_length_exceeded"),
        (OverloadedError("busy"), 503, "service_unavailable"),
        (TooManyRequestsError("slow down"), 429, "rate_limit_exceeded"),
        (WorkerLostError("gone"), 503, "service_unavailable"),
        (RuntimeError("boom"), 500, None),
    ]
    for exc, status, code in cases:
        s, b = oa.error_from_exception(exc)
        assert s == status and b["error"]["code"] == code and b["error"]["message"]


def test_bodies_and_sse():
    b = oa.chat_body("id", "m", "hello", "stop", 3, 2, created=1)
    assert b["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert b["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    c = oa.sse(oa.completion_chunk("id", "m", 1, "x", None))
    assert c.startswith(b"data: ") and c.endswith(b"\n\n")
    assert json.loads(c[6:])["choices"][0]["text"] == "x"
    assert plain_chat_prompt([{"role": "user", "content": "hi"}]) == "user: hi\nassistant:"


@pytest.mark.parametrize("escape,lone", [  # the escape in a string, and where its unpaired surrogate begins
    (rb"\ud800x", 0), (rb"\uD800", 0), (rb"\udbff\n", 0), (rb"ok \ud83d", 3), (rb"\udc00", 0),
    (rb"\ud800\u0041", 0), (rb"\ud800\ud800", 0), (rb"\ud83d\ude00 \ude00", 13)])
def test_a_lone_surrogate_escape_is_named_not_called_truncated(escape, lone):
    """Found in review: a string holding an unpaired UTF-16 surrogate escape (valid JSON grammar) was refused as
    "malformed JSON in the request body: Input data was truncated", msgspec's message; nothing was truncated."""
    chat = b'{"model":"m","max_tokens":3,"messages":[{"role":"user","content":"' + escape + b'"}]}'
    with pytest.raises(InvalidArgumentError) as e:
        oa.parse_chat(chat)
    msg = e.value.message
    assert "truncated" not in msg and "unpaired UTF-16 surrogate" in msg and "valid Unicode" in msg
    assert f"at byte {chat.index(escape) + lone} holds" in msg
    with pytest.raises(InvalidArgumentError, match="unpaired UTF-16 surrogate"):
        oa.parse_completion(b'{"model":"m","prompt":"a","stop":["\\\\", "' + escape + b'"]}')
    # a pair is one character; an escaped backslash before "ud800" is no escape; a body that ends inside an
    # escape, or right after a high surrogate whose pair may follow, is truncated still
    assert oa.parse_chat(chat.replace(escape, rb"\ud83d\ude00"))[0].messages[0].content == "\U0001f600"
    assert oa.parse_chat(chat.replace(escape, rb"\\ud800"))[0].messages[0].content == "\\ud800"
    for cut in (b"\\ud800", b"\\ud800\\", b"\\ud8", b"\\ud800\\udc"):
        with pytest.raises(InvalidArgumentError, match="truncated"):
            oa.parse_completion(b'{"model":"m","prompt":"' + cut)
