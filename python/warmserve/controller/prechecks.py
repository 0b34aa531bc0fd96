"""Cheap checks of a large request body (over ``api.INLINE_BODY_BYTES``) before it is decoded whole.

msgspec's decoder holds the GIL for a whole document, so a thread alone does not keep a 16 MiB body from stalling
the event loop: a chat of 1M empty messages took 3 s of it (found in review), a completion whose prompt was a batch
of 5M one-token lists 7.6 s. A body whose list is longer than the model's context could use is refused here first,
with the error its full decoding would have led to, from a count that stops one past the limit (chat messages) or
from byte counts done in C (a completion's prompt). What passes is bounded by the context and decoded on a thread.
"""

from __future__ import annotations

import json
import re

import msgspec

from warmserve.controller.openai_api import UNSUPPORTED, unsupported_error
from warmserve.errors import InvalidArgumentError, PromptTooLongError


#: The fields the server does not implement (``openai_api.UNSUPPORTED``), as their JSON: a request's are decoded
#: whole (typed Any) before they are refused, so a 16 MiB list in one of them took 4 s of the event loop (found in
#: review); their neutral values are a few bytes, so a large one is refused from its size.
_Unsupported = msgspec.defstruct("_Unsupported", [(n, msgspec.Raw, msgspec.Raw(b"null")) for n in UNSUPPORTED],
                                 kw_only=True)
#: An UNSUPPORTED field's JSON up to this long is decoded and checked as a small body's is (a neutral value may be
#: written long: pretty-printed, escaped, with extra keys; found in review); a longer one is refused from its size.
_DECODED_MAX_BYTES = 64 << 10
_BLANKS = b" \t\n\r"


class _ChatHead(_Unsupported, kw_only=True):
    model: str
    messages: msgspec.Raw


class _CompletionHead(_Unsupported, kw_only=True):
    model: str
    prompt: msgspec.Raw


def chat_head(body: bytes) -> tuple[str, msgspec.Raw] | None:
    """A chat body's model and its messages' JSON, not decoded (msgspec skips over it); None for a body that is
    no such object (``openai_api.parse_chat`` says what is wrong with it). A large unsupported field is refused
    (``_check_unsupported``)."""
    try:
        head = msgspec.json.decode(body, type=_ChatHead)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    _check_unsupported(head)
    return head.model, head.messages


def completion_head(body: bytes) -> tuple[str, msgspec.Raw] | None:
    """A completion body's model and its prompt's JSON, not decoded; None for a body that is no such object
    (``openai_api.parse_completion`` says what is wrong with it). A large unsupported field is refused."""
    try:
        head = msgspec.json.decode(body, type=_CompletionHead)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    _check_unsupported(head)
    return head.model, head.prompt


def _check_unsupported(head) -> None:
    """Refuse an UNSUPPORTED field whose value asks for something, with the 400 its full decoding would have led
    to: decoded when its JSON is short (_DECODED_MAX_BYTES), from its size when longer (no neutral value is, but
    an empty array padded with blanks); the others are checked once decoded."""
    for name, neutral in UNSUPPORTED.items():
        raw = bytes(getattr(head, name)).strip(_BLANKS)
        if len(raw) <= _DECODED_MAX_BYTES:
            if not neutral(msgspec.json.decode(raw)):
                raise unsupported_error(name)
        elif not (raw[:1] == b"[" and raw[-1:] == b"]" and not raw[1:-1].strip(_BLANKS)):
            raise unsupported_error(name)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_items = json.JSONDecoder()


def count_items(array, most: int) -> int | None:
    """How many items the JSON array ``array`` (UTF-8) holds, counted up to ``most`` (a longer one gives
    ``most``); None when it is no JSON array (``_decode`` says why). Item by item, in Python: run on a thread, it
    lets the event loop have the GIL between items, where msgspec's decoder holds it for a whole array, and
    stopping at ``most`` keeps it short however long the array."""
    try:
        text = str(array, "utf-8")
    except UnicodeDecodeError:
        return None
    space = _JSON_SPACE.match
    i = space(text).end()
    if text[i:i + 1] != "[":
        return None
    i = space(text, i + 1).end()
    if text[i:i + 1] == "]":
        return 0
    n = 0
    while n < most:
        try:
            _, i = _items.raw_decode(text, i)
        except (ValueError, RecursionError):
            return None
        n += 1
        i = space(text, i).end()
        if text[i:i + 1] == "]":
            return n
        if text[i:i + 1] != ",":
            return None
        i = space(text, i + 1).end()
    return n


def check_message_count(messages, max_context: int) -> None:
    """Refuse a chat of more messages (``messages``: their JSON array) than the model's context has tokens: each
    message costs its prompt at least one token. Counted up to one past the limit, never decoded whole."""
    n = count_items(messages, max_context + 1)
    if n is not None and n > max_context:
        raise PromptTooLongError(
            f"messages holds more than {max_context} messages (at least {n}): each takes at least one token of the "
            f"prompt, and this model's maximum context length is {max_context} tokens: send fewer messages",
            param="messages", messages=n, max_context=max_context)


def check_prompt_shape(prompt, max_context: int) -> None:
    """Refuse a completion's prompt (``prompt``: its JSON) that is a batch of prompts, or more token ids than the
    model's context has tokens, from byte counts done in C. A prompt is a string, a list of token ids, or a
    one-element list of either (``openai_api.CompletionRequest``): an array whose first item is no string is one of
    ``[ids]`` and ``[[ids]]``, so it has no '"', at most two '[', and one comma fewer than it has ids. Of an array
    of strings only the first is decoded (a string decodes fast), to see whether another follows."""
    raw = bytes(prompt).strip(b" \t\n\r")
    if not raw.startswith(b"["):
        return  # a string, or no prompt at all: the full decoding says which
    if raw[1:].lstrip(b" \t\n\r").startswith(b'"'):
        try:
            text = str(raw, "utf-8")
            _, i = _items.raw_decode(text, _JSON_SPACE.match(text, 1).end())
        except (UnicodeDecodeError, ValueError):
            return  # malformed: the full decoding says where
        if text[_JSON_SPACE.match(text, i).end():].startswith(","):
            raise InvalidArgumentError("prompt holds more than one prompt: a batch of prompts is not supported; "
                                       "send one prompt per request", param="prompt")
        return
    if b'"' in raw or raw.count(b"[") > 2:
        raise InvalidArgumentError("prompt must be a string, a list of token ids or a one-element list of either (a "
                                   "batch of prompts is not supported): send one prompt per request", param="prompt")
    ids = raw.count(b",") + 1
    if ids > max_context:
        raise PromptTooLongError(
            f"this model's maximum context length is {max_context} tokens; the prompt holds {ids} token ids: "
            f"shorten the prompt", param="prompt", prompt_tokens=ids, max_context=max_context)
