"""The controller's front end, shared by the HTTP API and ``warmserve.Cluster``: prompt preparation (chat template,
tokenisation, length checks) and one text iterator (token ids to text, stop strings cut), with no HTTP in it.

Stop strings are enforced here and only here: the controller detokenizes, workers see token ids. A stop string
ends the text where it begins and aborts the request, so its worker stops generating for it.
"""

from __future__ import annotations

import asyncio
import bisect
import weakref

from warmserve.controller.textstream import TextStream
from warmserve.engine.checks import token_ids
from warmserve.errors import InvalidArgumentError, PromptTooLongError

#: Prompts (text) longer than this many characters are tokenised on a worker thread, not on the event loop,
#: where a long one would stall every other request (HF tokenizers take about 1 s per 10 MB of text).
INLINE_TOKENIZE_CHARS = 8192
#: Chats of more messages than this are rendered through their template on a worker thread: a template costs per
#: message, so a chat of 400k empty messages stalled the loop for seconds though it had no text (found in review).
INLINE_CHAT_MESSAGES = 64


def plain_chat_prompt(messages: list[dict[str, str]]) -> str:
    """The fallback when a tokenizer ships no chat template: one 'role: text' line per message, then the cue."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def check_max_tokens(model, max_tokens: int, param: str = "max_tokens") -> None:
    """Refuse a max_tokens that leaves no room for a prompt, naming it as the client did (``param``: a chat's
    max_completion_tokens) (found in review: max_tokens 1e30 was refused as a prompt "more than the 0 tokens" the
    context left)."""
    if max_tokens >= model.max_context:
        raise PromptTooLongError(
            f"{param} {max_tokens} leaves no room for a prompt in this model's context of {model.max_context} "
            f"tokens: ask for fewer than {model.max_context} (prompt + {param} must fit)",
            param=param, max_tokens=max_tokens, max_context=model.max_context)


def check_prompt(model, ids: list[int], max_tokens: int, param: str = "prompt",
                 max_tokens_param: str | None = "max_tokens") -> None:
    """Refuse a prompt that cannot fit the model's context together with the tokens asked for, naming them as the
    client did (``max_tokens_param``: a chat's max_completion_tokens; None: a chat that set no limit, whose
    ``max_tokens`` is the least it must generate, so the message does not blame a field the client never sent)."""
    ctx = model.max_context
    if len(ids) + max_tokens > ctx:
        asked = (f"{max_tokens_param} asks for {max_tokens} more ({len(ids) + max_tokens} in all): shorten the "
                 f"prompt or lower {max_tokens_param}" if max_tokens_param else
                 (f"at least {max_tokens} must be generated (no max_tokens was set): shorten the prompt" if max_tokens
                  else "it must fit alone: shorten the prompt"))
        raise PromptTooLongError(
            f"this model's maximum context length is {ctx} tokens; the prompt has {len(ids)} tokens and {asked}",
            param=param, prompt_tokens=len(ids), max_tokens=max_tokens, max_context=ctx,
        )
    if len(ids) == 0:  # not `not ids`: the Python API may pass a numpy array
        raise InvalidArgumentError("the prompt is empty after tokenization; send some text", param=param)


def check_chars(model, chars: int, max_tokens: int, param: str = "prompt",
                max_tokens_param: str | None = "max_tokens") -> None:
    """Refuse, before tokenising it, a text that cannot fit: one token covers at most ``model.max_token_chars``
    characters (the longest entry of the vocabulary), so ``chars`` characters are at least
    ``chars / max_token_chars`` tokens. Characters a tokenizer's normalizer would drop count too.
    ``max_tokens_param``: as check_prompt's."""
    room = max(0, model.max_context - max_tokens)
    limit = room * max(1, model.max_token_chars)
    if chars > limit:
        beside = (f"{max_tokens_param} {max_tokens}: shorten the prompt or lower {max_tokens_param}"
                  if max_tokens_param else f"the {max_tokens} to generate (no max_tokens was set): shorten the prompt")
        raise PromptTooLongError(
            f"the prompt has {chars} characters: at {model.max_token_chars} characters per token at most, that is "
            f"more than the {room} tokens this model's context of {model.max_context} leaves beside {beside}",
            param=param, prompt_chars=chars, max_prompt_chars=limit, max_tokens=max_tokens,
            max_context=model.max_context,
        )


def _chat_text(model, messages: list[dict]) -> str | list[int]:
    """The chat template from the tokenizer's config when it has one, a plain 'role: text' layout otherwise. A
    template that refuses the messages raises (a 400 naming why: found in review, such chats were sent as plain
    text instead, and answered with nonsense)."""
    apply = getattr(model.tokenizer, "apply_chat_template", None)
    if apply is not None:
        out = apply(messages, add_generation_prompt=True)
        if out is not None:
            return out
    return plain_chat_prompt(messages)


def _has_template(model) -> bool:
    """Whether a chat's text comes from the model's own template (which writes any BOS itself), not from the plain
    'role: text' fallback (apply_chat_template's, or plain_chat_prompt when the tokenizer has none)."""
    tok = model.tokenizer
    return getattr(tok, "apply_chat_template", None) is not None and bool(getattr(tok, "chat_template", True))


def check_ids(model, ids: list, param: str) -> list[int]:
    """The token ids as ints, each checked against the vocabulary. Call it once the list's length is known to
    fit the context: it walks every item."""
    # Found in review: the refusals named neither the item nor, for an id past the vocabulary, the ids to send.
    out = token_ids(ids, param, f"{param} must be a string or a list of token ids (non-negative integers)",
                    "send each id as a JSON integer")
    vocab = getattr(model.tokenizer, "vocab_size", None)
    if out and vocab and (max(out) >= vocab or min(out) < 0):
        i = next(k for k, t in enumerate(out) if not 0 <= t < vocab)
        raise InvalidArgumentError(
            f"token id {out[i]} ({param}[{i}]) is outside the vocabulary [0, {vocab}) of this model: send ids from 0 "
            f"to {vocab - 1}, as its tokenizer makes them (POST /tokenize gives a text's)", param=param, index=i,
            token_id=out[i], vocab_size=vocab)
    return out


def _encode(model, text: str, max_tokens: int, param: str, add_special_tokens: bool,
            max_tokens_param: str | None) -> list[int]:
    check_chars(model, len(text), max_tokens, param, max_tokens_param)
    return list(model.tokenizer.encode(text, add_special_tokens=add_special_tokens))


def prepare(model, prompt=None, messages: list[dict] | None = None, *, max_tokens: int,
            max_tokens_param: str | None = "max_tokens", add_special_tokens: bool = True) -> list[int]:
    """Token ids of a prompt (text or token ids) or of a chat (``messages``: role/content dicts), checked against
    the model's vocabulary and context (``max_tokens_param``: what the client called max_tokens). Runs where it is
    called: ``aprepare`` keeps long texts off the loop. ``add_special_tokens``: a text prompt's (/tokenize's)."""
    param = "prompt" if messages is None else "messages"
    check_max_tokens(model, max_tokens, max_tokens_param or "min_tokens")
    if messages is not None:
        text = _chat_text(model, messages)
        # The template writes any BOS itself, so the rendered text is tokenised as is (as transformers'
        # apply_chat_template and vLLM's chat endpoint do); a completion prompt gets the tokenizer's own special
        # tokens (Llama's BOS from tokenizer.json's post-processor), as vLLM's completions endpoint gives it. The
        # plain fallback has no template to write it, so it gets them as a completion does (found in review: a
        # Llama base model's chat prompt lacked the BOS its completions prompt had).
        if isinstance(text, list):
            return _checked_ids(model, text, max_tokens, param, max_tokens_param)
        ids = _encode(model, text, max_tokens, param, not _has_template(model), max_tokens_param)
    elif isinstance(prompt, str):
        ids = _encode(model, prompt, max_tokens, param, add_special_tokens, max_tokens_param)
    elif prompt is None:  # found in review: Cluster.generate(model) was "the prompt is empty after tokenization"
        raise InvalidArgumentError("no prompt given: pass prompt= (text or token ids) or messages= (a chat)",
                                   param="prompt")
    else:
        return _checked_ids(model, prompt, max_tokens, param, max_tokens_param)
    check_prompt(model, ids, max_tokens, param, max_tokens_param)
    return ids


def _checked_ids(model, ids: list, max_tokens: int, param: str, max_tokens_param: str | None) -> list[int]:
    if len(ids) == 0:  # found in review: [] was refused as "empty after tokenization", though never tokenized
        raise InvalidArgumentError(f"{param} holds no token ids, got an empty list: send text or at least one token "
                                   "id", param=param)
    # The length first: a list of millions of ids is refused at once, not walked item by item (found in review:
    # 3.5M ids were checked one by one on the event loop before their count was compared with the context).
    check_prompt(model, ids, max_tokens, param, max_tokens_param)
    return check_ids(model, ids, param)


def _text_size(prompt, messages) -> int:
    if messages is not None:
        return sum(len(str(m.get("content", ""))) for m in messages)
    return len(prompt) if isinstance(prompt, str) else 0


def _prepare_sized(model, prompt, messages, max_tokens: int, max_tokens_param: str,
                   add_special_tokens: bool = True) -> list[int]:
    """``prepare``, refusing first a text whose size alone rules it out (before any template or tokenizer)."""
    check_chars(model, _text_size(prompt, messages), max_tokens, "prompt" if messages is None else "messages",
                max_tokens_param)
    return prepare(model, prompt, messages, max_tokens=max_tokens, max_tokens_param=max_tokens_param,
                   add_special_tokens=add_special_tokens)


async def aprepare(model, prompt=None, messages: list[dict] | None = None, *, max_tokens: int,
                   max_tokens_param: str | None = "max_tokens", add_special_tokens: bool = True) -> list[int]:
    """``prepare`` for the event loop: a text over INLINE_TOKENIZE_CHARS, or a chat of more than
    INLINE_CHAT_MESSAGES messages, is checked against the model's context by its size, then rendered and
    tokenised, on a worker thread."""
    check_max_tokens(model, max_tokens, max_tokens_param or "min_tokens")
    if messages is None:
        inline = not isinstance(prompt, str) or len(prompt) <= INLINE_TOKENIZE_CHARS
    else:
        inline = len(messages) <= INLINE_CHAT_MESSAGES and _text_size(None, messages) <= INLINE_TOKENIZE_CHARS
    if inline:
        return prepare(model, prompt, messages, max_tokens=max_tokens, max_tokens_param=max_tokens_param,
                       add_special_tokens=add_special_tokens)
    return await asyncio.to_thread(_prepare_sized, model, prompt, messages, max_tokens, max_tokens_param,
                                   add_special_tokens)


class TextGeneration:
    """The text of one generation request (a ``Req``), as an async iterator of non-empty pieces.

    Iterating ends when the request finishes or a stop string is found; an error the request ended with is
    raised. ``aclose()`` (or ``abort()``) stops the request wherever it is; every way out of the iteration ends
    the request, so its worker never keeps generating for nobody.
    """

    def __init__(self, req, decode, stop: tuple[str, ...] = (), token_text=None):
        self.req = req
        # Its outcome is the finish reason this text gives (Req.ended); one dropped unread settles it still.
        req.outcome_by_consumer = True
        weakref.finalize(self, req.settle)
        self.text = TextStream(decode, stop, min_tokens=req.sampling.min_tokens)
        # a logprob's token text (``take_logprobs``): ``decode`` unless given (the engine's keeps special tokens)
        self._token_text = token_text or decode
        self._ended = False
        self._lp_taken = 0   # tokens whose logprobs were handed out by take_logprobs

    def take_logprobs(self) -> list[tuple[int, str, object]]:
        """(token id, token text, ``protocol.TokenLogprobs``) of the tokens received since the last call, for a
        request whose sampling asked for logprobs: while it runs, those whose text begins in what has been handed
        out (text held back as the possible start of a stop string keeps its tokens back too); once it ended, the
        rest of ``text.ids``: after a stop string, those that begin before it. So the streamed logprobs add up to
        the non-streamed ones (found in review: streams listed the tokens of a stop string that was then cut away),
        one per token id of the output. Each token's text is its own decode (``token_text``), so the texts of a word
        split over tokens may differ in spacing from the text (as OpenAI's tokens do)."""
        t = self.text
        if t.stopped or self._ended:
            end = len(t.ids)
        else:
            end = bisect.bisect_left(t.starts, t.emitted)
        lps = self.req.logprobs
        end = min(end, len(lps), len(t.ids))
        out = [(t.ids[i], self._token_text([t.ids[i]]), lps[i]) for i in range(self._lp_taken, end)]
        self._lp_taken = max(self._lp_taken, end)
        return out

    def take_logprobs_and_offsets(self) -> tuple[list[tuple[int, str, object]], list[int]]:
        """``take_logprobs()`` and where each of those tokens begins in the text (completions' ``text_offset``):
        from the text stream's token starts, never past the text's end (found in review: offsets summed from each
        token's own decode, one U+FFFD per byte of a split character, ran past the end of the text)."""
        first = self._lp_taken
        entries = self.take_logprobs()
        t = self.text
        end = len(t.text)
        return entries, [min(t.starts[k], end) if k < len(t.starts) else end
                         for k in range(first, first + len(entries))]

    @property
    def finish_reason(self) -> str | None:
        """"stop" (EOS, a stop token or a stop string), "length", "abort"; None while it runs."""
        if self.text.stopped:
            return "stop"
        return self.req.finish_reason

    @property
    def completion_tokens(self) -> int:
        """Tokens generated, through the one that completed the stop string when one ended it: the stop string's
        tokens count though ``text.ids`` and the logprobs leave them out with its text (docs/api.md)."""
        return min(self.req.generated, self.text.tokens_to_stop()) if self.text.stopped else self.req.generated

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        while not self._ended:
            try:
                tokens = await self.req.__anext__()
            except StopAsyncIteration:
                self._ended = True
                rest = self.text.finish()  # may find a stop string completed by the last tokens
                self.req.settle(self.finish_reason)
                if rest:
                    return rest
                break
            except BaseException:  # an error, or the consumer was cancelled: the request must not run on
                self.abort()
                raise
            piece = self.text.push(tokens, stop_token=self._engine_stopped())
            if self.text.stopped:
                self.abort("stop")  # ended as asked: counted as "stop", not as an abort
                piece += self.text.finish()
            if piece:
                return piece
        raise StopAsyncIteration

    def _engine_stopped(self) -> bool:
        """The tokens just taken are the request's last, and their last is the EOS or stop token id that ended it
        on its engine. Exact, not a guess at the token: the engine ends a request with "stop" only on such a token,
        which it reports as the final one (engine.py), and the controller pushes that final event's tokens and ends
        the request in one step, so a request found ended here has had every token taken, up to that one. The
        front end's own "stop" (a stop string) ends it only after its text stream stopped, taking nothing more."""
        r = self.req
        return r.done and r.error is None and r.finish_reason == "stop" and not self.text.stopped

    async def collect(self) -> str:
        """All of the text (the iteration run to its end)."""
        try:
            async for _ in self:
                pass
        finally:
            self.abort()
        return self.text.text

    def abort(self, reason: str = "abort") -> None:
        """End the request; ``reason`` "error": a sibling choice failed or was refused (outcome error, not abort);
        "stop": a stop string. One that had ended on its engine is counted now, if its count waited for its text:
        as "stop" for a stop string, as its engine ended it otherwise (the client left before reading its end)."""
        self._ended = True
        self.req.abort(reason)
        self.req.settle("stop" if reason == "stop" else None)

    async def aclose(self) -> None:
        self.abort()


class Choices:
    """The ``n`` generations of one request (its choices) as one stream of events, in the order they come.

    ``async for index, piece, logprobs in choices``: a non-empty text piece of choice ``index``, or ``piece`` None
    when that choice has ended (its ``finish_reason`` is set). With ``logprobs``, each event carries
    ``take_logprobs_and_offsets()`` of its choice taken right after its piece, so the logprobs are that piece's
    whenever the consumer gets to it (found in review: taken when a slow client's write was done, the first event
    after a wait got the logprobs of every piece produced meanwhile, and those pieces none); None without. An
    error of any choice is raised and ends all of them, as does leaving the iteration (``abort()``).
    """

    def __init__(self, gens: list[TextGeneration], logprobs: bool = False):
        self.gens = gens
        self.logprobs = logprobs
        self._q: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._left = len(gens)

    async def _pump(self, i: int, gen: TextGeneration) -> None:
        taken = gen.take_logprobs_and_offsets if self.logprobs else lambda: None
        try:
            async for piece in gen:
                self._q.put_nowait((i, piece, taken(), None))
            self._q.put_nowait((i, None, taken(), None))
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # handed to the consumer, raised in its task
            self._q.put_nowait((i, None, None, e))

    def __aiter__(self):
        return self

    async def __anext__(self) -> tuple[int, str | None, tuple[list, list[int]] | None]:
        if self._q is None:
            self._q = asyncio.Queue()
            self._tasks = [asyncio.ensure_future(self._pump(i, g)) for i, g in enumerate(self.gens)]
        if self._left == 0:
            raise StopAsyncIteration
        try:
            i, piece, taken, err = await self._q.get()
        except BaseException:
            self.abort()
            raise
        if err is not None:  # the others end as errors: their client did not go away (found in review)
            self.abort("error")
            raise err
        if piece is None:
            self._left -= 1
        return i, piece, taken

    async def collect(self) -> list[str]:
        """Each choice's whole text."""
        if len(self.gens) == 1:
            return [await self.gens[0].collect()]
        try:
            async for _ in self:
                pass
        finally:
            self.abort()
        return [g.text.text for g in self.gens]

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.gens)

    def abort(self, reason: str = "abort") -> None:
        """End every choice still running; ``reason`` as ``TextGeneration.abort``'s (the first one given counts)."""
        for t in self._tasks:
            t.cancel()
        for g in self.gens:
            g.abort(reason)


__all__ = ["TextGeneration", "Choices", "prepare", "aprepare", "check_max_tokens", "check_prompt", "check_chars",
           "plain_chat_prompt", "INLINE_TOKENIZE_CHARS", "INLINE_CHAT_MESSAGES"]
