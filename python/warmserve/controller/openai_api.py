"""OpenAI-compatible request schemas, response bodies, SSE framing and error bodies.

Pure functions over bytes and dicts, so the HTTP layer stays thin and all of this is testable without a server.
Unknown request fields are ignored (clients send many we do not use); fields of the OpenAI API we cannot honour
(``UNSUPPORTED``: tools, response_format, logit_bias, ...) are refused with a 400 naming them, unless their value
asks for nothing.
"""

from __future__ import annotations

import itertools
import operator
import time
import uuid
from typing import Any

import msgspec

from warmserve.controller.request_json import decode_json
from warmserve.errors import InvalidArgumentError, PromptTooLongError, UnknownModelError, WarmServeError
from warmserve.protocol import MAX_TOP_LOGPROBS, SamplingParams, stop_strings
from warmserve.sampling import MAX_TOKEN_ID  # the largest id (and top_k) the wire carries

#: max_tokens of a completion that does not say (OpenAI's legacy completions default). A chat that does not say,
#: or a completion that sends null, may run to the end of the model's context, as OpenAI's chat and vLLM let it
#: (``fill_max_tokens``).
DEFAULT_MAX_TOKENS = 16


class StreamOptions(msgspec.Struct, omit_defaults=True):
    #: True when left out, as vLLM has it: ``"stream_options": {}`` asks for the usage chunk (found in review).
    include_usage: bool | None = True
    #: vLLM's usage on every chunk: not implemented, refused when true (``_refuse_unsupported``).
    continuous_usage_stats: bool | None = False


#: Most choices (``n``) one request may ask for; each is a sequence of its own on the instance.
MAX_N = 16
#: The seeds a request may send: torch.long's range, which vLLM's request models allow. The Python API takes the
#: wider [-2**63, 2**64) of ``sampling.SEED_MAX``; the sampler reads a seed modulo 2**64 (``sampler.draw_seed``).
HTTP_SEED_MIN, HTTP_SEED_MAX = -(1 << 63), (1 << 63) - 1

#: Request fields of the OpenAI API this server does not implement, with the values that ask for nothing (so a
#: client that always sends its defaults still works); any other value is a 400 naming the field.
UNSUPPORTED = {
    "tools": lambda v: v in (None, []),
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: v in (None, []),
    "function_call": lambda v: v in (None, "none"),
    "parallel_tool_calls": lambda v: True,  # meaningless without tools, which are refused
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "logit_bias": lambda v: not v,
    "suffix": lambda v: not v,
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
    "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
    "prompt_logprobs": lambda v: v is None,
    "guided_json": lambda v: v is None,
    "guided_regex": lambda v: v is None,
    "guided_choice": lambda v: v is None,
    "guided_grammar": lambda v: v is None,
    # vLLM's extensions this server does not implement (found in review: msgspec dropped them, so a client asking
    # for the stop string in its output, special tokens kept, or its chat template's own arguments got neither)
    "include_stop_str_in_output": lambda v: v in (None, False),
    "skip_special_tokens": lambda v: v in (None, True),
    "spaces_between_special_tokens": lambda v: v in (None, True),
    "use_beam_search": lambda v: v in (None, False),
    "allowed_token_ids": lambda v: v is None,
    "bad_words": lambda v: not v,
    "truncate_prompt_tokens": lambda v: v is None,
    "chat_template": lambda v: v is None,
    "chat_template_kwargs": lambda v: not v,
    "add_generation_prompt": lambda v: v in (None, True),
    "continue_final_message": lambda v: v in (None, False),
}

#: Chat roles a prompt can be built from ("developer" is the newer name of "system").
CHAT_ROLES = ("system", "developer", "user", "assistant")


class _RequestCommon(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The fields completions and chat requests share (``top_k``, ``min_p``, ``repetition_penalty``,
    ``stop_token_ids``, ``ignore_eos`` and ``min_tokens`` are vLLM's extensions)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    #: null is the default, as OpenAI's schema allows (``_nulls_to_defaults``)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    best_of: int | None = None
    user: str | None = None
    # Not implemented: refused unless neutral (UNSUPPORTED).
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    logit_bias: Any = None
    suffix: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    prompt_logprobs: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    include_stop_str_in_output: Any = None
    skip_special_tokens: Any = None
    spaces_between_special_tokens: Any = None
    use_beam_search: Any = None
    allowed_token_ids: Any = None
    bad_words: Any = None
    truncate_prompt_tokens: Any = None
    chat_template: Any = None
    chat_template_kwargs: Any = None
    add_generation_prompt: Any = None
    continue_final_message: Any = None


class CompletionRequest(_RequestCommon, kw_only=True):
    #: Left out: DEFAULT_MAX_TOKENS; an explicit null: the rest of the context, as vLLM takes it (found in review:
    #: null was cut at 16 tokens, so wrappers that send unset fields as null got answers cut short).
    max_tokens: int | None | msgspec.UnsetType = msgspec.UNSET
    #: A string, a list of token ids, or a one-element list of either (batches of several are refused).
    prompt: str | list[Any]
    echo: bool | None = False
    #: Alternatives per token (0..MAX_TOP_LOGPROBS): the chosen token's logprob comes with any value.
    logprobs: int | None = None


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    # Declared so that they can be refused: an unknown field is dropped by msgspec, and an assistant turn's tool
    # calls silently vanished from the prompt (found in review). Tool calling is not supported.
    tool_calls: Any = None
    function_call: Any = None
    tool_call_id: Any = None


class ChatRequest(_RequestCommon, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


def _bad(message: str, param: str | None = None) -> InvalidArgumentError:
    return InvalidArgumentError(message, param=param)


def _nulls_to_defaults(req) -> None:
    """An explicit null for n, stream or echo means the default, as OpenAI's schema has them nullable and vLLM
    takes them (found in review: a client that sends every default got a 400 on every request)."""
    if req.n is None:
        req.n = 1
    if req.stream is None:
        req.stream = False
    if getattr(req, "echo", False) is None:
        req.echo = False


def unsupported_error(name: str) -> InvalidArgumentError:
    """The 400 for a field of UNSUPPORTED given a value that asks for something."""
    return _bad(f"'{name}' is not supported by this server; leave it out (see the README's API section for what "
                "is supported)", name)


#: UNSUPPORTED's values at once, and a request's that sends none: one comparison, not a call a field (CPU review)
_unsupported_of = operator.attrgetter(*UNSUPPORTED)
_NONE_SENT = (None,) * len(UNSUPPORTED) if all(neutral(None) for neutral in UNSUPPORTED.values()) else ()


def _refuse_unsupported(req) -> None:
    if _unsupported_of(req) != _NONE_SENT:
        for name, neutral in UNSUPPORTED.items():
            if not neutral(getattr(req, name)):
                raise unsupported_error(name)
    if not 1 <= req.n <= MAX_N:
        raise _bad(f"n must be in [1, {MAX_N}], got {req.n}", "n")
    if req.best_of is not None and req.best_of != req.n:
        raise _bad(f"best_of={req.best_of} is not supported (only best_of == n, {req.n}): leave it out", "best_of")
    if req.stream_options is not None and not req.stream:
        raise _bad("stream_options is only allowed with stream=true: leave it out or stream", "stream_options")
    if req.stream_options is not None and req.stream_options.continuous_usage_stats:
        raise _bad("stream_options.continuous_usage_stats (usage on every chunk) is not supported: leave it out "
                   "(include_usage gives the totals in a last chunk)", "stream_options.continuous_usage_stats")
    big = [t for t in req.stop_token_ids or () if t > MAX_TOKEN_ID]
    if big:  # it would fail later, on the way to a worker, blamed on the prompt (found in review)
        raise _bad(f"stop_token_ids must be token ids in [0, {MAX_TOKEN_ID}], got {big[0]}", "stop_token_ids")
    if req.top_k is not None and req.top_k > MAX_TOKEN_ID:  # the same, after a model was even cold-started for it
        raise _bad(f"top_k must be at most {MAX_TOKEN_ID} (a top_k at least the vocabulary's size keeps every "
                   f"token, as -1 and 0 do), got {req.top_k}", "top_k")
    if req.top_k is not None and req.top_k < -1:  # found in review: -5 was taken as no cut; vLLM refuses it
        raise _bad(f"top_k must be -1 or 0 (no cut) or at least 1, got {req.top_k}", "top_k")
    if req.seed is not None and not HTTP_SEED_MIN <= req.seed <= HTTP_SEED_MAX:  # vLLM's bound: a seed it
        # refuses is refused here too, not taken by one server of a fleet and refused by the next
        raise InvalidArgumentError(f"seed must fit in 64 bits as a signed integer, [{HTTP_SEED_MIN}, {HTTP_SEED_MAX}] "
                                   f"(torch.long's range, as vLLM takes it), got {req.seed}: send a seed within it",
                                   param="seed", seed=str(req.seed))


def _check_min_tokens(req, max_tokens: int) -> None:
    """min_tokens against the limit the client set, named as it named it: SamplingParams' own check called a chat's
    max_completion_tokens max_tokens, and told a request that set no limit to raise a max_tokens of 1 it never
    sent (found in review). A max_tokens under 1 is left to SamplingParams, which names it."""
    least, limit = req.min_tokens, max_tokens_param(req)
    if least is not None and least < 0:
        raise InvalidArgumentError(f"min_tokens must be at least 0, got {least}: send 0, or leave it out, for no "
                                   "minimum", param="min_tokens", min_tokens=least)
    if least and limit is not None and 0 < max_tokens < least:
        raise InvalidArgumentError(f"min_tokens must be in [0, {limit}] = [0, {max_tokens}], got {least}: lower "
                                   f"min_tokens or raise {limit}", param="min_tokens", min_tokens=least,
                                   max_tokens=max_tokens)


def _sampling(req, max_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None = None) -> SamplingParams:
    """The request's sampling fields with OpenAI's defaults (temperature and top_p 1; the model's, where its
    checkpoint sets them, replace these in ``with_model_defaults``); SamplingParams checks the ranges, the seed's
    (torch.long's) and min_tokens' against the limit as the client named it before it."""
    _refuse_unsupported(req)
    _check_min_tokens(req, DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens)
    return SamplingParams(
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p),
        top_k=0 if req.top_k is None or req.top_k < 0 else req.top_k,  # vLLM: -1 (or 0) = no cut
        seed=req.seed, stop=stop_strings(req.stop), stop_token_ids=tuple(req.stop_token_ids or ()),
        ignore_eos=req.ignore_eos, min_p=float(req.min_p or 0.0), min_tokens=req.min_tokens or 0,
        presence_penalty=float(req.presence_penalty or 0.0), frequency_penalty=float(req.frequency_penalty or 0.0),
        repetition_penalty=1.0 if req.repetition_penalty is None else float(req.repetition_penalty),
        logprobs=logprobs, prompt_logprobs=prompt_logprobs,
    )


def with_model_defaults(sampling: SamplingParams, defaults: dict, sent) -> SamplingParams:
    """``sampling`` with the model's defaults (``ControllerModel.sampling_defaults``) for the fields the request
    left out or sent as null (``sent(field)`` is None), as vLLM applies a checkpoint's generation_config.json."""
    taken = {k: v for k, v in defaults.items() if sent(k) is None}
    return msgspec.structs.replace(sampling, **taken) if taken else sampling


def parse_completion(body: bytes) -> tuple[CompletionRequest, SamplingParams]:
    req = decode_json(body, CompletionRequest)
    _nulls_to_defaults(req)
    req.prompt = _one_prompt(req.prompt)
    # echo with logprobs: the prompt's tokens get theirs too (OpenAI's legacy completions; lm-eval's loglikelihood)
    prompt_logprobs = req.logprobs if req.echo else None
    max_tokens = DEFAULT_MAX_TOKENS if req.max_tokens is msgspec.UNSET else req.max_tokens
    if max_tokens is None:  # null: the least it must generate while the prompt is checked; fill_max_tokens the rest
        max_tokens = max(1, req.min_tokens or 0)
    if req.echo and max_tokens == 0:
        # The prompt scored, nothing generated: one token is generated for its logprobs and left out of the
        # answer (api.py), so the prompt must leave room for it in the context.
        if req.stream:
            raise _bad("max_tokens 0 with echo (the prompt scored, nothing generated) is answered whole: leave "
                       "stream out", "stream")
        if req.min_tokens:  # checked against the 0 sent, not the 1 generated for the logprobs (found in review)
            raise _bad(f"min_tokens must be in [0, max_tokens] = [0, 0], got {req.min_tokens}: with max_tokens 0 "
                       f"(echo: the prompt scored) leave min_tokens out", "min_tokens")
        max_tokens = 1
    return req, _sampling(req, max_tokens, req.logprobs, prompt_logprobs)


def _one_prompt(p):
    """The prompt as a string or a list (of token ids: its items are checked by the front end once its length is
    known to fit the model's context, so a list of millions is not walked first)."""
    if isinstance(p, str):
        return p
    if not p:  # found in review: the 400 said only "must not be empty", not what to send
        raise _bad('prompt must not be empty, got []: send text ("prompt": "Hello") or at least one token id '
                   '("prompt": [1, 2, 3])', "prompt")
    if isinstance(p[0], (str, list)):
        if len(p) != 1:
            raise _bad(f"a batch of {len(p)} prompts is not supported; send one prompt per request", "prompt")
        p = p[0]
        if isinstance(p, str):
            return p
    if not isinstance(p, list) or not p:  # only [[]] comes here; found in review: the value was not said
        raise _bad(f"prompt must be a string or a list of token ids (non-negative integers), got [{p!r:.40}], a "
                   "batch of one empty list: send text or at least one token id, as [1, 2, 3] or [[1, 2, 3]]",
                   "prompt")
    return p


def parse_chat(body: bytes) -> tuple[ChatRequest, SamplingParams]:
    req = decode_json(body, ChatRequest)
    _nulls_to_defaults(req)
    _check_messages(req.messages)
    # Named as the client named them (found in review: a bad max_completion_tokens was reported as max_tokens,
    # a bad top_logprobs as logprobs).
    if req.max_completion_tokens is not None and req.max_completion_tokens < 1:
        raise _bad(f"max_completion_tokens must be an integer >= 1, got {req.max_completion_tokens}",
                   "max_completion_tokens")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise _bad(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {req.top_logprobs}", "top_logprobs")
    # 0 is neutral, as vLLM takes it (its own default; found in review: clients that send every default got a 400)
    if req.top_logprobs and not req.logprobs:
        raise _bad(f"top_logprobs {req.top_logprobs} needs logprobs=true", "top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    mt = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    # Without a limit, min_tokens (at least 1) while the prompt is checked against the context, as that many must
    # fit; fill_max_tokens gives the rest.
    return req, _sampling(req, max(1, req.min_tokens or 0) if mt is None else mt, logprobs)


class _Named(msgspec.Struct):
    model: str = ""


def model_named(body: bytes) -> str | None:
    """The model a request body names (None where none can be read): for the access log of a body refused whole."""
    try:
        return msgspec.json.decode(body, type=_Named, strict=False).model or None
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None


def max_tokens_param(req) -> str | None:
    """The field that limits the request's tokens, as the client named it; None when it sets no limit (a chat
    without one, a completion's explicit null), so messages blame no field the client never sent."""
    if getattr(req, "max_completion_tokens", None) is not None:
        return "max_completion_tokens"
    return None if req.max_tokens is None else "max_tokens"  # UNSET (a completion's 16) is named too


def fill_max_tokens(req, sampling: SamplingParams, max_context: int, prompt_tokens: int,
                    default_max_tokens: int | None = None) -> SamplingParams:
    """The sampling with its max_tokens: as asked, or, when the request sets no limit, the model's
    ``default_max_tokens`` (generation_config.json's max_new_tokens, as vLLM takes it) within what the model's
    context leaves after the prompt (found in review: a chat without max_tokens stopped at 16 tokens, and a prompt
    within 16 tokens of the context was refused over a max_tokens the client never sent)."""
    if max_tokens_param(req) is not None:
        return sampling
    room = max(1, max_context - prompt_tokens)
    # never under the request's min_tokens, which the prompt check already found room for (vLLM would refuse the
    # pair with a 400 naming a max_tokens the client never sent)
    limit = room if default_max_tokens is None else min(room, max(default_max_tokens, sampling.min_tokens))
    # Marked as the server's: an instance whose KV cache holds less than the context lowers it to what fits
    # (found in review: it refused the chat with a 400 over a limit the client never sent).
    return msgspec.structs.replace(sampling, max_tokens=limit, max_tokens_defaulted=True)


def message_text(m: ChatMessage) -> str:
    """A message's text; content given as parts is its text parts one per line, as vLLM and TensorRT-LLM join them
    (found in review: they were joined with nothing, so parts "Hello" and "world" read "Helloworld")."""
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    parts = []
    for part in m.content:
        if part.get("type") != "text":
            raise _bad(f"content part of type {part.get('type')!r} is not supported; send text", "messages")
        text = part.get("text")
        if not isinstance(text, str):  # found in review: a null became the text "None"
            raise _bad(f"a text content part needs its 'text' as a string, got {type(text).__name__}", "messages")
        parts.append(text)
    return "\n".join(parts)


_TOOL_MESSAGE_FIELDS = ("tool_calls", "function_call", "tool_call_id")


def _check_messages(messages: list[ChatMessage]) -> None:
    if not messages:  # found in review: the 400 said only "must not be empty", not what to send
        raise _bad('messages must not be empty, got []: send at least one message, as [{"role": "user", '
                   '"content": "Hello"}]', "messages")
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            why = ("tool calling is not supported" if m.role in ("tool", "function")
                   else "it is not a chat role")
            raise _bad(f"messages[{i}].role {m.role!r} is not accepted ({why}): use one of {', '.join(CHAT_ROLES)}",
                       "messages")
        for field in _TOOL_MESSAGE_FIELDS:
            if getattr(m, field) not in (None, []):
                raise _bad(f"messages[{i}].{field} is not accepted (tool calling is not supported): send the "
                           f"turn's text as its content", "messages")


def _turn(m: ChatMessage) -> dict[str, str]:
    """A message as the chat template reads it; its ``name`` kept where given, for templates that name speakers
    (found in review: it was dropped, so two users of one chat read as one)."""
    return {"role": m.role, "content": message_text(m), **({"name": m.name} if m.name else {})}


def chat_parts(body: bytes):
    """The chat request, its sampling and its messages as dicts (``parse_chat``, then ``chat_dicts``)."""
    req, sampling = parse_chat(body)
    return req, sampling, chat_dicts(req)


def chat_dicts(req: ChatRequest) -> list[dict[str, str]]:
    return [_turn(m) for m in req.messages]


def messages_from(messages) -> list[dict[str, str]]:
    """Chat messages given as dicts (the Python API), checked as the HTTP API checks them: roles, text content
    (parts keep their text), not empty (found in review: the Python API sent a list of parts as its repr)."""
    try:
        msgs = msgspec.convert(list(messages), list[ChatMessage])
    except (msgspec.ValidationError, TypeError) as e:
        raise _bad(f"messages must be a list of {{'role': ..., 'content': ...}} dicts: {e}", "messages") from None
    _check_messages(msgs)
    return [_turn(m) for m in msgs]


# ---------------------------------------------------------------------------------------------------- responses


_ID_BASE = uuid.uuid4().hex[:12]  # random per process, so ids from two servers do not collide
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """A response id: unique within the process by a counter (no urandom per request), across servers by a base."""
    return f"{prefix}-{_ID_BASE}{next(_ids):012x}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_logprobs(entries, decode, offsets: list[int]) -> dict:
    """The ``logprobs`` object of a completions choice (OpenAI's legacy layout) from ``TextGeneration
    .take_logprobs()`` entries (``prompt_logprob_entries`` first, with echo); ``offsets``: where each entry's token
    begins in the choice's text (``TextGeneration.take_logprobs_and_offsets``, ``textstream.token_starts``)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": list(offsets)}
    for _, text, lp in entries:
        out["tokens"].append(text)
        # the prompt's first token has none (nothing before it): null, as OpenAI's echo gives it
        out["token_logprobs"].append(lp.logprob if lp is not None else None)
        top = None
        if lp is not None:  # the token's own logprob always among them, as OpenAI documents (up to logprobs + 1)
            top = _top_by_text(lp, decode)
            top.setdefault(text, lp.logprob)
        out["top_logprobs"].append(top)
    return out


def _top_by_text(lp, decode) -> dict[str, float]:
    """The alternatives keyed by their decoded text, as vLLM keys them. Distinct tokens can share a text (bytes of
    split characters all decode to U+FFFD): the most likely of them keeps the key, so a
    token's own entry is never lowered by a less likely namesake (found in review: the last, least likely, won),
    and such a position lists fewer alternatives than asked for."""
    top: dict[str, float] = {}
    for t, v in zip(lp.top_ids, lp.top_logprobs):
        key = decode([t])
        if key not in top or v > top[key]:
            top[key] = v
    return top


def prompt_logprob_entries(prompt_ids: list[int], lps: list, decode) -> list:
    """(token id, text, TokenLogprobs or None) of each prompt token, the first having none."""
    return [(t, decode([t]), lps[i - 1] if 0 < i <= len(lps) else None) for i, t in enumerate(prompt_ids)]


def _token(token_id: int, text: str, logprob: float, token_bytes) -> dict:
    raw = token_bytes(token_id) if token_bytes is not None else text.encode("utf-8")
    return {"token": text, "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(entries, decode, token_bytes=None) -> dict:
    """The ``logprobs`` object of a chat choice from ``TextGeneration.take_logprobs()`` entries. ``token_bytes``
    (the tokenizer's ``token_bytes``): each token's own bytes, so that the bytes of tokens that split a character
    join into it, as OpenAI documents them (found in review: they were those of each token's decode, U+FFFD);
    without it, the UTF-8 of each token's text."""
    return {"content": [{**_token(tid, text, lp.logprob, token_bytes),
                         "top_logprobs": [_token(t, decode([t]), v, token_bytes)
                                          for t, v in zip(lp.top_ids, lp.top_logprobs)]}
                        for tid, text, lp in entries], "refusal": None}


def completion_choice(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def chat_choice(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish}


def completion_body(rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                    created: int | None = None, *, choices: list[dict] | None = None) -> dict:
    return {
        "id": rid, "object": "text_completion", "created": created or int(time.time()), "model": model,
        "choices": choices if choices is not None else [completion_choice(0, text, finish)],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None, *, index: int = 0,
                     logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [completion_choice(index, text, finish, logprobs)]}


def chat_body(rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
              created: int | None = None, *, choices: list[dict] | None = None) -> dict:
    return {
        "id": rid, "object": "chat.completion", "created": created or int(time.time()), "model": model,
        "choices": choices if choices is not None else [chat_choice(0, text, finish)],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish: str | None, *, index: int = 0,
               logprobs: dict | None = None) -> dict:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }


def usage_chunk(rid: str, model: str, created: int, obj: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def model_card(model, created: int) -> dict:
    """A model as /v1/models lists it, with vLLM's fields: its context length (``max_model_len``: found in review,
    clients that size prompts by it found none), ``root`` (the served name: vLLM gives the path it loaded, which
    here would show the server's folders) and ``parent`` (null: no adapters)."""
    return {"id": model.name, "object": "model", "created": created, "owned_by": "warmserve", "root": model.name,
            "parent": None, "max_model_len": model.max_context}


def models_body(models: list, created: int) -> dict:
    return {"object": "list", "data": [model_card(m, created) for m in models]}


_enc = msgspec.json.Encoder()


def sse(obj: dict) -> bytes:
    return b"data: " + _enc.encode(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------------------- errors

#: OpenAI's error code of a request that does not fit the model's context: its prompt, or the tokens it asks for.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"

_TYPE_BY_STATUS = {
    400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", None),
    404: ("invalid_request_error", None), 405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"), 413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"), 429: ("rate_limit_error", "rate_limit_exceeded"),
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
        if isinstance(e, UnknownModelError):
            code = "model_not_found"  # only a model: an unknown route is a 404 without a code, as OpenAI's
        elif isinstance(e, PromptTooLongError):
            # max_tokens, max_completion_tokens or min_tokens alone past the context too, as OpenAI codes a request
            # over it whatever part is too long (found in review: min_tokens had the code, max_tokens none), so a
            # client that matches on the code sees every such 400
            code = CONTEXT_LENGTH_EXCEEDED
        return status, error_body(status, e.message, getattr(e, "param", None), code if isinstance(code, str) else None)
    if isinstance(e, ValueError):
        return 400, error_body(400, str(e))
    return 500, error_body(500, f"internal error: {type(e).__name__}: {e}")
