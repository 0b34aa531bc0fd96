"""The sampler (for warmserve.protocol.SamplingParams): penalties, greedy, temperature, top-k, top-p; seeded
requests draw from their own generator; log-probabilities of the chosen tokens and their top alternatives.

A seeded request gives the same tokens whatever else is in its batch: its draws come from a generator only it
uses, one draw per token. Draw k is seeded from the request's seed and k alone (``draw_seed``), so a request
resumed elsewhere after k tokens (protocol.Generate.output_ids) goes on with draw k, the tokens it would have
given unmoved, instead of repeating its first draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from warmserve.protocol import SamplingParams, TokenLogprobs


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


def penalize(logits: torch.Tensor, p: SamplingParams, prompt: Sequence[int], output: Sequence[int]) -> torch.Tensor:
    """One row of logits with p's penalties applied (a new tensor).

    presence/frequency (OpenAI's definition): ``logit -= frequency * count_in_output + presence * (count > 0)``;
    repetition (CTRL, as transformers and vLLM apply it): over tokens of the prompt and the output, positive
    logits are divided by the penalty and negative ones multiplied, so > 1 always makes a seen token less likely.
    """
    logits = logits.clone()
    vocab = logits.shape[-1]
    if output and (p.presence_penalty or p.frequency_penalty):
        counts = torch.bincount(torch.tensor(list(output), device=logits.device), minlength=vocab)[:vocab]
        logits -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty * (counts > 0).to(logits.dtype)
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt) | set(output)), dtype=torch.long, device=logits.device)
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    return logits


_MASK64 = (1 << 64) - 1


def draw_seed(seed: int, index: int) -> int:
    """The seed of draw ``index`` (0: the first output token) of a request seeded with ``seed``: splitmix64's
    finaliser of the two, so neighbouring draws and neighbouring seeds get unrelated streams."""
    z = (int(seed) + 0x9E3779B97F4A7C15 * (int(index) + 1)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           histories: list[tuple[Sequence[int], Sequence[int]]] | None = None) -> list[int]:
    """logits [B, V] float32 -> one token id per row. histories: each row's (prompt, output) token ids, needed
    only by rows with penalties."""
    if histories is not None and any(p.penalized for p in params):
        logits = logits.clone()
        for i, p in enumerate(params):
            if p.penalized:
                logits[i] = penalize(logits[i], p, *histories[i])
    out = logits.argmax(dim=-1).tolist()
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = filter_logits(logits[i].cpu() / p.temperature, p.top_k, p.top_p)  # CPU: generators live there
        probs = row.softmax(-1)
        if not _drawable(probs):
            # multinomial would raise, and the step with it for every request of the batch (found in review): this
            # row takes its most likely token instead; its neighbours draw as they would alone.
            out[i] = _argmax_finite(logits[i])
            continue
        out[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
    return out


def _drawable(probs: torch.Tensor) -> bool:
    """What torch.multinomial accepts: finite probabilities with a positive sum. A softmax is never negative nor
    infinite, and a NaN anywhere makes the sum NaN, so one reduction tells."""
    total = float(probs.sum())
    return math.isfinite(total) and total > 0.0


def _argmax_finite(row: torch.Tensor) -> int:
    """The most likely token of a row that may hold NaN or +-inf (NaN never wins; argmax alone picks it)."""
    row = torch.nan_to_num(row.float(), nan=float("-inf"))
    return int(row.argmax().item())


def logprobs(logits: torch.Tensor, tokens: list[int], tops: list[int | None]) -> list[TokenLogprobs | None]:
    """Log-softmax of each row's raw logits (fp32) at its chosen token, and its ``tops[i]`` most likely tokens;
    None for rows whose request asked for none (``tops[i] is None``)."""
    want = [i for i, k in enumerate(tops) if k is not None]
    out: list[TokenLogprobs | None] = [None] * len(tops)
    if not want:
        return out
    lp = torch.log_softmax(logits[want].float(), dim=-1)
    chosen = lp[torch.arange(len(want), device=lp.device), torch.tensor([tokens[i] for i in want], device=lp.device)]
    kmax = max(tops[i] for i in want)
    top_v, top_i = (lp.topk(kmax, dim=-1) if kmax else (None, None))
    chosen = chosen.tolist()
    top_v = top_v.tolist() if kmax else None
    top_i = top_i.tolist() if kmax else None
    for j, i in enumerate(want):
        k = tops[i]
        out[i] = TokenLogprobs(chosen[j], top_i[j][:k] if k else [], top_v[j][:k] if k else [])
    return out
