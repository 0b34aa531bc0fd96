"""SamplingParams and the sampler: greedy, temperature, top-k, top-p; seeded requests draw from their own generator.

A seeded request gives the same tokens whatever else is in its batch: its draws come from a generator only it
uses, one draw per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from warmserve.errors import InvalidArgumentError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop."""

    #: Most new tokens to generate.
    max_tokens: int = 16
    #: Softmax temperature; 0 = greedy (argmax).
    temperature: float = 0.0
    #: Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = all).
    top_p: float = 1.0
    #: Keep only the k most likely tokens (0 = all).
    top_k: int = 0
    #: Seed of this request's own generator (None: drawn from the engine's generator).
    seed: int | None = None
    #: Token ids that end the request (finish_reason "stop"), besides the model's EOS.
    stop_token_ids: tuple[int, ...] = ()
    #: Strings that end the request once the decoded output contains one (needs the model's tokenizer).
    stop: tuple[str, ...] = ()
    #: Keep generating past EOS until max_tokens.
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.max_tokens < 1:
            raise InvalidArgumentError(f"max_tokens must be >= 1, got {self.max_tokens}", max_tokens=self.max_tokens)
        if self.temperature < 0:
            raise InvalidArgumentError(f"temperature must be >= 0, got {self.temperature}", temperature=self.temperature)
        if not 0 < self.top_p <= 1:
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {self.top_p}", top_p=self.top_p)
        if self.top_k < 0:
            raise InvalidArgumentError(f"top_k must be >= 0, got {self.top_k}", top_k=self.top_k)
        if any(not s for s in self.stop):
            raise InvalidArgumentError("stop strings must be non-empty", stop=list(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """One row of temperature-scaled logits with everything outside top-k / top-p set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, idx, sorted_logits)
    return logits


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """logits [B, V] float32 -> one token id per row."""
    out = logits.argmax(dim=-1).tolist()
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = filter_logits(logits[i].cpu() / p.temperature, p.top_k, p.top_p)  # CPU: generators live there
        probs = row.softmax(-1)
        out[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
    return out
