"""OpenAI-compatible request schemas, response bodies, SSE framing and error bodies.

Pure functions over bytes and dicts, so the HTTP layer stays thin and all of this is testable without a server.
Unknown request fields are ignored (clients send many we do not use); fields we cannot honour are refused.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import msgspec

from warmserve.errors import InvalidArgumentError, WarmServeError
from warmserve.protocol import SamplingParams, stop_strings

#: max_tokens when a request does not say (OpenAI's legacy completions default).
DEFAULT_MAX_TOKENS = 16


class StreamOptions(msgspec.Struct, omit_defaults=True):
    include_usage: bool = False


class _RequestCommon(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The fields completions and chat requests share."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None


class CompletionRequest(_RequestCommon, kw_only=True):
    #: A string, a list of token ids, or a one-element list of either (batches of several are refused).
    prompt: str | list[Any]
    echo: bool = False
    logprobs: int | None = None


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(_RequestCommon, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None


def _bad(message: str, param: str | None = None) -> InvalidArgumentError:
    return InvalidArgumentError(message, param=param)


def _decode(body: bytes, cls):
    if not body:
        raise _bad("the request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(body, type=cls)
    except msgspec.ValidationError as e:
        # msgspec names the offending path, e.g. "Expected `int`, got `str` - at `$.max_tokens`"
        text = str(e)
        param = text.rsplit("`$.", 1)[-1].rstrip("`") if "`$." in text else None
        raise _bad(f"invalid request: {text}", param) from None
    except msgspec.DecodeError as e:
        raise _bad(f"malformed JSON in the request body: {e}") from None


def _sampling(req, max_tokens: int | None) -> SamplingParams:
    """The request's sampling fields with OpenAI's defaults (temperature and top_p 1); SamplingParams checks the
    ranges (the seed's included: one that does not fit 64 bits is a 400 here, not a failure on the wire)."""
    if req.n != 1:
        raise _bad(f"n={req.n} is not supported; send n=1 (one choice per request)", "n")
    return SamplingParams(
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p),
        seed=req.seed, stop=stop_strings(req.stop),
    )


def parse_completion(body: bytes) -> tuple[CompletionRequest, SamplingParams]:
    req = _decode(body, CompletionRequest)
    req.prompt = _one_prompt(req.prompt)
    if req.echo or req.logprobs:
        raise _bad("echo and logprobs are not supported", "echo" if req.echo else "logprobs")
    return req, _sampling(req, req.max_tokens)


def _is_ids(x) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in x)


def _one_prompt(p):
    """The prompt as a string or a list of token ids."""
    if isinstance(p, str):
        return p
    if not p:
        raise _bad("prompt must not be empty", "prompt")
    if isinstance(p[0], (str, list)):
        if len(p) != 1:
            raise _bad(f"a batch of {len(p)} prompts is not supported; send one prompt per request", "prompt")
        p = p[0]
        if isinstance(p, str):
            return p
    if not _is_ids(p) or not p:
        raise _bad("prompt must be a string or a list of token ids (non-negative integers)", "prompt")
    return p


def parse_chat(body: bytes) -> tuple[ChatRequest, SamplingParams]:
    req = _decode(body, ChatRequest)
    if not req.messages:
        raise _bad("messages must not be empty", "messages")
    if req.logprobs:
        raise _bad("logprobs are not supported", "logprobs")
    mt = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return req, _sampling(req, mt)


def message_text(m: ChatMessage) -> str:
    """A message's text; content given as parts keeps only the text parts."""
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    parts = []
    for part in m.content:
        if part.get("type") != "text":
            raise _bad(f"content part of type {part.get('type')!r} is not supported; send text", "messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def chat_dicts(req: ChatRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": message_text(m)} for m in req.messages]


# ---------------------------------------------------------------------------------------------------- responses


_ID_BASE = uuid.uuid4().hex[:12]  # random per process, so ids from two servers do not collide
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """A response id: unique within the process by a counter (no urandom per request), across servers by a base."""
    return f"{prefix}-{_ID_BASE}{next(_ids):012x}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                    created: int | None = None) -> dict:
    return {
        "id": rid, "object": "text_completion", "created": created or int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None) -> dict:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def chat_body(rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
              created: int | None = None) -> dict:
    return {
        "id": rid, "object": "chat.completion", "created": created or int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish: str | None) -> dict:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(rid: str, model: str, created: int, obj: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def models_body(names: list[str], created: int) -> dict:
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "warmserve"} for n in names]}


_enc = msgspec.json.Encoder()


def sse(obj: dict) -> bytes:
    return b"data: " + _enc.encode(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------------------- errors

_TYPE_BY_STATUS = {
    400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"), 405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"), 429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"), 504: ("server_error", "timeout"),
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    etype, ecode = _TYPE_BY_STATUS.get(status, ("server_error", None))
    return {"error": {"message": message, "type": etype, "param": param, "code": code or ecode}}


def error_from_exception(e: BaseException) -> tuple[int, dict]:
    """Map an exception to (HTTP status, OpenAI-style error body). Unknown exceptions are 500s."""
    if isinstance(e, WarmServeError):
        status = e.http_status
        code = getattr(e, "code", None)
        return status, error_body(status, e.message, getattr(e, "param", None), code if isinstance(code, str) else None)
    if isinstance(e, ValueError):
        return 400, error_body(400, str(e))
    return 500, error_body(500, f"internal error: {type(e).__name__}: {e}")
