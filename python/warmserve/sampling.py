"""Sampling parameters: how a request picks each next token and when it stops, and the log-probabilities it gets
back. The one sampling type from HTTP parsing (or ``warmserve.Cluster``) through the controller and the wire
(``protocol.Generate``, ``protocol.Tokens``, which re-exports these names) to the engine's sampler.
"""

from __future__ import annotations

import functools

import msgspec

from . import errors

#: Seeds must fit the sampler's generator (torch takes [-2**63, 2**64)) and MessagePack's 64-bit integers.
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1
#: The largest token id (and top_k) that can be sent to a worker: the wire's integers are signed 64-bit.
MAX_TOKEN_ID = (1 << 63) - 1
#: Most alternatives ("top logprobs") returned per token: OpenAI's chat limit and vLLM's default max_logprobs.
MAX_TOP_LOGPROBS = 20
#: Temperatures below this are greedy, as in vLLM: logits / 1e-40 overflow float32 (found in review: it failed a batch).
GREEDY_TEMPERATURE = 1e-5
#: Most stop_token_ids one request may give: the largest vocabulary of current models (Gemma 3's, 262,144 tokens);
#: a longer list repeats ids or names ids no model generates, and costs its engine memory and a set build for nothing.
MAX_STOP_TOKEN_IDS = 1 << 18
#: Most stop strings one request may give. OpenAI's limit is 4 and vLLM has none; evaluation harnesses and agent
#: frameworks send more than 4 (found in review: they got a 400 here). The text stream checks each one against the
#: held-back tail at every token, so the count stays bounded.
MAX_STOP_STRINGS = 64
#: Smallest repetition_penalty: seen tokens' logits are divided by it, and 1e-39 overflowed float32 the same way.
MIN_REPETITION_PENALTY = 0.01


def _bad(message: str, param: str, **fields) -> errors.InvalidArgumentError:
    return errors.InvalidArgumentError(message, param=param, **fields)


class SamplingParams(msgspec.Struct, frozen=True, omit_defaults=True, dict=True):
    """How to pick each next token and when to stop: the one sampling type, from HTTP parsing (or
    ``warmserve.Cluster``) through the controller and the wire to the engine's sampler.

    Construction validates the ranges (raising ``InvalidArgumentError`` with the parameter and its value), also
    when a worker decodes it off the wire. Temperature 0 (the default; vLLM's SamplingParams has 1) is greedy: the
    OpenAI API's default of 1 is applied where a request is parsed, and by ``Cluster.generate``'s keywords.
    """

    #: Most new tokens to generate (>= 1).
    max_tokens: int = 16
    #: max_tokens is the server's (a chat that set none gets the context left after its prompt): an engine whose KV
    #: cap holds less lowers it to what fits (ending with "length") where a client's own is refused (PromptTooLong).
    max_tokens_defaulted: bool = False
    #: Softmax temperature in [0, 2]; below GREEDY_TEMPERATURE (0 included) = greedy (argmax).
    temperature: float = 0.0
    #: Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p, in (0, 1] (1 = all).
    top_p: float = 1.0
    #: Keep only the k most likely tokens (0 = no cut; vLLM's -1 is taken for it and made 0, as over HTTP).
    top_k: int = 0
    #: Seed of this request's own generator, in [SEED_MIN, SEED_MAX]; None draws from the engine's generator.
    seed: int | None = None
    #: Strings that end the output where they begin (at most MAX_STOP_STRINGS, non-empty). Owned by the controller's
    #: text stream, which detokenizes; workers and the engine see token ids and ignore this field.
    stop: tuple[str, ...] = ()
    #: Token ids that end the request (finish_reason "stop"), besides the model's EOS; enforced by the engine.
    stop_token_ids: tuple[int, ...] = ()
    #: Keep generating past EOS until max_tokens.
    ignore_eos: bool = False
    #: Subtracted once from the logit of every token already in the output, in [-2, 2] (OpenAI's definition).
    presence_penalty: float = 0.0
    #: Subtracted from a token's logit once per time it is already in the output, in [-2, 2] (OpenAI's definition).
    frequency_penalty: float = 0.0
    #: Tokens already in the prompt or the output get positive logits divided, negative ones multiplied, by this,
    #: in [MIN_REPETITION_PENALTY, 2]; 1 = off (CTRL's penalty, as transformers and vLLM define it).
    repetition_penalty: float = 1.0
    #: Log-probabilities returned per generated token: None = none; k in [0, MAX_TOP_LOGPROBS] = the chosen token's
    #: and the k most likely tokens'. They are of the model's own distribution (log-softmax of its logits), before
    #: temperature, penalties and top-k/top-p, as vLLM returns them by default.
    logprobs: int | None = None
    #: Log-probabilities of the prompt's tokens (each but the first, given the ones before it), with the k most
    #: likely alternatives: None = none; k in [0, MAX_TOP_LOGPROBS]. Sent with the first generated token.
    prompt_logprobs: int | None = None
    #: Drop the tokens whose probability (after temperature) is below min_p times the most likely token's, in
    #: [0, 1] (0 = off); applied before top_k/top_p and not to greedy requests, as in vLLM's sampler.
    min_p: float = 0.0
    #: Fewest new tokens before the request may end, in [0, max_tokens]: until the output has this many, EOS (but
    #: with ignore_eos) and stop_token_ids cannot be generated (the engine masks their logits) and stop strings do
    #: not end it (the controller's text stream looks for one only in the text of later tokens), as vLLM does.
    min_tokens: int = 0

    def __post_init__(self):
        self._check_types()
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise _bad(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}", "max_tokens",
                       max_tokens=self.max_tokens)
        if not 0.0 <= self.temperature <= 2.0:
            raise _bad(f"temperature must be in [0, 2], got {self.temperature}", "temperature",
                       temperature=self.temperature)
        if not 0.0 <= self.min_p <= 1.0:
            raise _bad(f"min_p must be in [0, 1] (0 = off), got {self.min_p}", "min_p", min_p=self.min_p)
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise _bad(f"min_tokens must be in [0, max_tokens] = [0, {self.max_tokens}], got {self.min_tokens}: "
                       f"lower min_tokens or raise max_tokens", "min_tokens",
                       min_tokens=self.min_tokens, max_tokens=self.max_tokens)
        if not 0.0 < self.top_p <= 1.0:
            raise _bad(f"top_p must be in (0, 1], got {self.top_p}", "top_p", top_p=self.top_p)
        # Bounded here, not only over HTTP: found in review, a larger value from the Python API was queued and
        # routed, then failed on the way to a worker, blamed on the prompt.
        if not 0 <= self.top_k <= MAX_TOKEN_ID:
            raise _bad(f"top_k must be in [0, {MAX_TOKEN_ID}] or -1 (a top_k at least the vocabulary's size keeps "
                       f"every token, as 0 and -1 do), got {self.top_k}", "top_k", top_k=str(self.top_k))
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise _bad(f"seed must fit in 64 bits ([{SEED_MIN}, {SEED_MAX}]), got {self.seed}: send a smaller seed",
                       "seed", seed=str(self.seed))
        if len(self.stop) > MAX_STOP_STRINGS:
            raise _bad(f"at most {MAX_STOP_STRINGS} stop sequences, got {len(self.stop)}", "stop",
                       stop_count=len(self.stop), max_stop_strings=MAX_STOP_STRINGS)
        empty = [i for i, s in enumerate(self.stop) if not s]
        if empty:
            # found in review: the refusal said neither which one nor what to do
            raise _bad(f"stop sequences must not be empty: stop[{empty[0]}] is \"\" ({len(empty)} empty of "
                       f"{len(self.stop)}); drop the empty strings", "stop", empty_index=empty[0])
        bad = [t for t in self.stop_token_ids if not 0 <= t <= MAX_TOKEN_ID]
        if bad:
            raise _bad(f"stop_token_ids must be token ids in [0, {MAX_TOKEN_ID}], got {bad[0]}", "stop_token_ids")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not -2.0 <= v <= 2.0:
                raise _bad(f"{name} must be in [-2, 2], got {v}", name, **{name: v})
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= 2.0:
            raise _bad(f"repetition_penalty must be in [{MIN_REPETITION_PENALTY}, 2] (1 = off), got "
                       f"{self.repetition_penalty}",
                       "repetition_penalty", repetition_penalty=self.repetition_penalty,
                       min_repetition_penalty=MIN_REPETITION_PENALTY)
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= MAX_TOP_LOGPROBS:
                raise _bad(f"{name} (top alternatives per token) must be in [0, {MAX_TOP_LOGPROBS}], got {v}", name,
                           **{name: v, "max_logprobs": MAX_TOP_LOGPROBS})

    def _check_types(self) -> None:
        """Types, before the ranges: decoded off the wire msgspec checks them, but a SamplingParams made in Python
        (``warmserve.Cluster``) is not (found in review: a stop list of ints gave a bare TypeError, a fractional
        top_k reached a worker as a malformed message, and a lone stop string of 5 characters or more was counted
        as that many stop sequences). A lone stop string is one stop sequence; lists become tuples."""
        for name in ("max_tokens", "top_k", "seed", "logprobs", "prompt_logprobs", "min_tokens"):
            v = getattr(self, name)
            # None means "none" only where it is a value of its own (found in review: top_k=None gave a bare
            # TypeError at its range check)
            nullable = name in ("seed", "logprobs", "prompt_logprobs")
            if (v is not None or not nullable) and (isinstance(v, bool) or not isinstance(v, int)):
                raise _bad(f"{name} must be an integer, got {v!r}", name)
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _bad(f"{name} must be a number, got {v!r}", name)
        for name in ("ignore_eos", "max_tokens_defaulted"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(f"{name} must be True or False, got {getattr(self, name)!r}", name)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) for s in stop):
            raise _bad(f"stop must be a string or a list of strings, got {self.stop!r}", "stop")
        ids = self.stop_token_ids
        if isinstance(ids, (tuple, list)) and len(ids) > MAX_STOP_TOKEN_IDS:  # before its items are walked
            raise _bad(f"stop_token_ids has {len(ids)} ids, more than the {MAX_STOP_TOKEN_IDS} allowed (the largest "
                       f"vocabulary of current models): send each id once, only ids of the model's vocabulary",
                       "stop_token_ids",
                       stop_token_ids_count=len(ids), max_stop_token_ids=MAX_STOP_TOKEN_IDS)
        if not isinstance(ids, (tuple, list)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise _bad(f"stop_token_ids must be a list of token ids (integers), got {ids!r}", "stop_token_ids")
        # Found in review: vLLM's SamplingParams (and this API over HTTP, and a generation_config.json) take -1 for
        # no cut, this one refused it; a user's SamplingParams(top_k=-1) from vLLM code now means the same here.
        if self.top_k == -1:
            msgspec.structs.force_setattr(self, "top_k", 0)
        if type(self.stop) is not tuple:
            msgspec.structs.force_setattr(self, "stop", tuple(stop))
        if type(ids) is not tuple:
            msgspec.structs.force_setattr(self, "stop_token_ids", tuple(ids))

    @functools.cached_property
    def stop_token_set(self) -> frozenset[int]:
        """stop_token_ids as a set, built once per request (``dict=True`` gives it room): the engine looks each
        generated token up in it, and a scan of the tuple cost every request batched beside a long one (found in
        review: 1.5M ids slowed the others 5x)."""
        return frozenset(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty) or self.repetition_penalty != 1.0


class TokenLogprobs(msgspec.Struct, frozen=True, array_like=True):
    """Log-probabilities at one generated token (natural log, the model's distribution, see
    ``SamplingParams.logprobs``); the token itself is the matching entry of ``Tokens.token_ids``."""

    #: Of the generated token.
    logprob: float
    #: The most likely tokens at this position, most likely first, and their log-probabilities.
    top_ids: list[int] = []
    top_logprobs: list[float] = []


def stop_strings(stop: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The ``stop`` argument as users give it (one string, a list, or None) as SamplingParams takes it."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    # anything else goes to SamplingParams as it is, to be refused with the parameter's name (not a bare TypeError)
    return tuple(stop) if isinstance(stop, (list, tuple)) else stop
