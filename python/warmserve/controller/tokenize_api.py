"""``POST /tokenize`` and ``POST /detokenize``, as vLLM's OpenAI-compatible server has them: a client counts a
prompt's tokens with the served model's own tokenizer and chat template (to check it fits, or to budget its
max_tokens) and turns token ids back into text, with no generation. A prompt is read as the completion and chat
routes read it (the same special tokens, the same template, the same checks against the model's context), so the
count is what a generation of it would take."""

from __future__ import annotations

import asyncio

import msgspec

from warmserve.controller import openai_api as oa
from warmserve.controller.frontend import aprepare, check_ids
from warmserve.controller.request_json import decode_json
from warmserve.errors import InvalidArgumentError, PromptTooLongError

#: Ids past which a detokenize runs on a worker thread, off the event loop (as a long prompt's tokenising does).
INLINE_DETOKENIZE_IDS = 16_384


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: str
    #: A completion's prompt: text, or token ids (checked against the vocabulary and returned).
    prompt: str | list[int] | None = None
    #: A chat's messages ({"role", "content"} objects), rendered by the model's chat template with the generation
    #: prompt, as the chat route renders them.
    messages: list[dict] | None = None
    #: Text prompts only: the tokenizer's own special tokens (a Llama's BOS), as the completions route adds them.
    add_special_tokens: bool = True


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    model: str
    tokens: list[int]


def _tokenize_request(body: bytes) -> TokenizeRequest:
    req = decode_json(body, TokenizeRequest)
    if (req.prompt is None) == (req.messages is None):
        raise InvalidArgumentError("send exactly one of prompt (text or token ids) or messages (a chat)",
                                   param="prompt" if req.prompt is None else "messages")
    return req


async def tokenize(controller, body: bytes) -> dict:
    """``{"count", "max_model_len", "tokens"}`` of the body's prompt or chat on its model (vLLM's answer)."""
    req = _tokenize_request(body)
    model = controller.model(req.model)
    # max_tokens 0: the prompt alone is checked against the context (the longest a generation could have)
    messages = oa.messages_from(req.messages) if req.messages is not None else None
    ids = await aprepare(model, req.prompt, messages, max_tokens=0, max_tokens_param=None,
                         add_special_tokens=req.add_special_tokens)
    return {"count": len(ids), "max_model_len": model.max_context, "tokens": ids}


async def detokenize(controller, body: bytes) -> dict:
    """``{"prompt"}``: the text of the body's token ids on its model (special tokens skipped, as in answers)."""
    req = decode_json(body, DetokenizeRequest)
    model = controller.model(req.model)
    if len(req.tokens) > model.max_context:  # no answer holds more; and the walk below stays short
        # coded context_length_exceeded as /tokenize's and the generation routes' (found in review: no code)
        raise PromptTooLongError(f"tokens has {len(req.tokens)} ids, more than this model's context of "
                                   f"{model.max_context}: send at most that many", param="tokens",
                                   tokens=len(req.tokens), max_context=model.max_context)
    ids = check_ids(model, req.tokens, "tokens")
    decode = model.tokenizer.decode
    text = decode(ids) if len(ids) <= INLINE_DETOKENIZE_IDS else await asyncio.to_thread(decode, ids)
    return {"prompt": text}
