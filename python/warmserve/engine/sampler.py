"""The sampler (for warmserve.protocol.SamplingParams): min_tokens' masking of stop tokens, penalties, greedy,
temperature, min-p, top-k, top-p (vLLM's order); seeded requests draw from their own generator; log-probabilities
of the chosen tokens and their top alternatives.

A seeded request's draws come from a generator only it uses, one draw per token: the sampler gives a row the
same token whatever else is in its batch, given the same logits. Draw k is seeded from the request's seed and k
alone (``draw_seed``), so a request resumed elsewhere after k tokens (protocol.Generate.output_ids) goes on with
draw k, the tokens it would have given unmoved given the same logits, instead of repeating its first draws (its
prefill of prompt and tokens gives logits about 1e-6 off the decode's, as a batch does below). The logits are
not batch-invariant (as in vLLM without its batch-invariant kernels): a batch of 12 sums a row's matmuls in
another order than a batch of 1, about 1e-6 apart on CPU, so a seeded draw that falls that close to a boundary
of the cumulative probabilities can pick another token beside other requests (found in review: 1 of 6 seeded
requests of 60 tokens on llama-20m, at its 9th token); it repeats exactly alone, or in the same batch. Greedy is
unmoved unless its top two logits are that close.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch

from warmserve.protocol import SamplingParams, TokenLogprobs


#: Most likely tokens a top_p row looks for its nucleus in (its top_k where smaller) before it bins its whole
#: vocabulary (_wide_nucleus): at a real vocabulary the nucleus lies within them nearly always, and a topk of them
#: costs a small part of a full sort.
TOP_P_CANDIDATES = 1024


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float, min_p: float = 0.0) -> torch.Tensor:
    """One row of temperature-scaled logits with everything outside min-p, then top-k / top-p, set to -inf."""
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(), float("-inf"))
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


class SamplerState:
    """What the sampler keeps for one sequence between its steps (``Sequence.sampler_state``), so that a step costs
    the same however long the prompt, the output or the stop list (found in review: min_tokens rebuilt and filtered
    up to 262,144 stop ids at each step, 13 ms a step for a 4-request batch where it was 3.1; the repetition penalty
    rebuilt the set of the whole prompt at each step, 845 ms a step for 8 rows of 128k-token prompts). As vLLM
    keeps them: the held-back ids once per request, the prompt's seen ids once, the output's token by token.

    The seen ids are index tensors of distinct ids (the penalties gather, change and scatter those logits alone,
    as before: a where() over the whole vocabulary cost more than the old gather for short prompts). Each part
    remembers what it was built from (the prompt and output lists, their lengths, the vocabulary and device, the
    params and EOS ids), so a state given anything else rebuilds instead of going wrong: the engine's output list
    only grows and is kept across preemption, so there it never rebuilds."""

    __slots__ = ("held", "held_key", "seen", "counted_ids", "counts", "key", "prompt", "prompt_len", "output",
                 "counted")

    def __init__(self) -> None:
        self.held: torch.Tensor | None = None  # stop ids + EOS in the vocabulary, once each (an index)
        self.held_key: tuple | None = None
        self.seen: _Ids | None = None  # ids of the prompt and the output (repetition_penalty)
        self.counted_ids: _Ids | None = None  # ids of the output in the vocabulary (presence/frequency)
        self.counts: torch.Tensor | None = None  # [vocab] int32: times each id is in the output
        self.key: tuple | None = None
        self.prompt: Sequence[int] | None = None
        self.prompt_len = 0
        self.output: Sequence[int] | None = None
        self.counted = 0  # output tokens already in seen/counts

    def held_back(self, p: SamplingParams, eos: Collection[int], vocab: int, device: torch.device) -> torch.Tensor:
        """``held_back_ids``, built once for these params, EOS ids, vocabulary and device."""
        key = (vocab, device, None if p.ignore_eos else frozenset(eos))
        if self.held is None or self.held_key is None or self.held_key[0] is not p or self.held_key[1:] != key:
            self.held, self.held_key = held_back_ids(p, eos, vocab, device), (p, *key)
        return self.held

    def sync(self, p: SamplingParams, prompt: Sequence[int], output: Sequence[int], vocab: int,
             device: torch.device) -> None:
        """Bring the seen ids and counts to ``prompt`` + ``output``: only the output's new tokens are added;
        anything else than the same prompt and a longer same output list (or other penalties, vocabulary or device)
        rebuilds."""
        key = (vocab, device, p.repetition_penalty != 1.0, bool(p.presence_penalty or p.frequency_penalty))
        try:
            if (key != self.key or prompt is not self.prompt or len(prompt) != self.prompt_len
                    or output is not self.output or len(output) < self.counted):
                self.key, self.prompt, self.prompt_len, self.output, self.counted = key, prompt, len(prompt), output, 0
                self.seen = self.counted_ids = self.counts = None
                if key[2]:
                    self.seen = _Ids(vocab, device)
                    self.seen.add(prompt)  # an id past the vocabulary raises IndexError, as the old logits[seen] did
                if key[3]:
                    self.counted_ids = _Ids(vocab, device)
                    self.counts = torch.zeros(vocab, dtype=torch.int32, device=device)
            if len(output) > self.counted:
                new = output[self.counted:]
                if self.seen is not None:
                    self.seen.add(new)
                if self.counts is not None:
                    if min(new) < 0:  # the old bincount refused it too
                        raise ValueError(f"output token ids must be >= 0, got {min(new)}")
                    # ids past the vocabulary are not counted, as the old bincount(...)[:vocab] dropped them
                    new = [t for t in new if t < vocab]
                    self.counted_ids.add(new)
                    at = torch.tensor(new, dtype=torch.long, device=device)
                    self.counts.index_put_((at,), torch.ones_like(at, dtype=torch.int32), accumulate=True)
                self.counted = len(output)
        except BaseException:
            self.key = None  # half updated (by an id the old formula refused too): rebuilt at the next call
            raise


class _Ids:
    """Distinct token ids as an index tensor that grows (doubling its room) as ids come, and host flags of which
    ids it holds, so an id is checked and added without reading the device."""

    __slots__ = ("flags", "buf", "n")

    def __init__(self, vocab: int, device: torch.device) -> None:
        self.flags = bytearray(vocab)
        self.buf = torch.empty(0, dtype=torch.long, device=device)
        self.n = 0

    def add(self, ids: Sequence[int]) -> None:
        flags, fresh = self.flags, []
        for t in ids:  # a negative id wraps, as torch's index does (and as the old set of ids did)
            if not flags[t]:
                flags[t] = 1
                fresh.append(t)
        if not fresh:
            return
        if self.n + len(fresh) > self.buf.numel():
            room = torch.empty(max(2 * self.buf.numel(), self.n + len(fresh), 16), dtype=torch.long,
                               device=self.buf.device)
            room[:self.n] = self.buf[:self.n]
            self.buf = room
        self.buf[self.n:self.n + len(fresh)] = torch.tensor(fresh, dtype=torch.long)
        self.n += len(fresh)

    @property
    def index(self) -> torch.Tensor:
        return self.buf[:self.n]


def held_back_ids(p: SamplingParams, eos: Collection[int], vocab: int, device: torch.device) -> torch.Tensor:
    """The token ids a request may not generate while its output is short of min_tokens, as an index: its
    stop_token_ids, and the model's EOS ids unless it ignores EOS (vLLM's min_tokens logits processor), each once
    and only those in the vocabulary (an id past it is no token of this model: stop_token_ids are not checked
    against it, and one past int64 failed the tensor's build, and with it the step of every request in the batch)."""
    ids = {t for t in p.stop_token_set if t < vocab}
    if not p.ignore_eos:
        ids.update(t for t in eos if t < vocab)
    return torch.tensor(sorted(ids), dtype=torch.long, device=device)


def penalize(logits: torch.Tensor, p: SamplingParams, prompt: Sequence[int], output: Sequence[int],
             state: SamplerState | None = None) -> torch.Tensor:
    """One row of logits with p's penalties applied (a new tensor), in vLLM's order: repetition first, then
    frequency and presence (found in review: presence/frequency first, so the repetition rule saw the lowered
    logit's sign, and logit 1 with presence 1 and repetition 2 became 0 where vLLM gives -0.5).

    repetition (CTRL, as transformers and vLLM apply it): over tokens of the prompt and the output, positive
    logits are divided by the penalty and negative ones multiplied, so > 1 always makes a seen token less likely;
    presence/frequency (OpenAI's definition): ``logit -= frequency * count_in_output + presence * (count > 0)``.
    ``state``: the sequence's SamplerState (None: one built here from the whole prompt and output)."""
    state = SamplerState() if state is None else state
    state.sync(p, prompt, output, logits.shape[-1], logits.device)
    logits = logits.clone()
    if p.repetition_penalty != 1.0:
        seen = state.seen.index
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if output and (p.presence_penalty or p.frequency_penalty):
        f, pr = p.frequency_penalty, p.presence_penalty
        if math.copysign(1.0, f * 0.0 + pr * 0.0) < 0:
            # both negative: the whole-vocabulary formula subtracted -0.0 from the uncounted logits too, which
            # makes a -0.0 logit +0.0; the same here, so that not even the sign of a zero changes
            logits -= -0.0
        ids = state.counted_ids.index
        counts = state.counts[ids]
        logits[ids] = logits[ids] - (f * counts.to(logits.dtype) + pr * (counts > 0).to(logits.dtype))
    return logits


_MASK64 = (1 << 64) - 1


def draw_seed(seed: int, index: int) -> int:
    """The seed of draw ``index`` (0: the first output token) of a request seeded with ``seed``: splitmix64's
    finaliser of the two, so neighbouring draws and neighbouring seeds get unrelated streams."""
    z = (int(seed) + 0x9E3779B97F4A7C15 * (int(index) + 1)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def adjust_logits(logits: torch.Tensor, params: list[SamplingParams],
                  histories: list[tuple[Sequence[int], Sequence[int]]] | None, eos: Collection[int] = (),
                  states: list[SamplerState | None] | None = None) -> torch.Tensor:
    """The logits ``sample`` draws from: each row's held-back ids (``held_back_ids``, while its output is short of
    min_tokens) at -inf, then its penalties (``penalize``); ``logits`` itself when no row has either. states: each
    row's SamplerState (None, or a None entry: built from scratch for this call)."""
    if histories is None or not any(p.penalized or p.min_tokens for p in params):
        return logits
    logits = logits.clone()
    vocab = logits.shape[-1]
    for i, p in enumerate(params):
        prompt, output = histories[i]
        state = states[i] if states is not None else None
        if len(output) < p.min_tokens:
            held = (state if state is not None else SamplerState()).held_back(p, eos, vocab, logits.device)
            if held.numel():
                logits[i].index_fill_(0, held, float("-inf"))
        elif state is not None:
            state.held = None  # the output only grows: not needed again
        if p.penalized:
            logits[i] = penalize(logits[i], p, prompt, output, state)
    return logits


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           histories: list[tuple[Sequence[int], Sequence[int]]] | None = None,
           eos: Collection[int] = (), states: list[SamplerState | None] | None = None) -> list[int]:
    """logits [B, V] float32 -> one token id per row. histories: each row's (prompt, output) token ids, needed
    only by rows with penalties or min_tokens; eos: the model's EOS ids, which min_tokens holds back with the
    stop_token_ids (their logits are -inf, before the penalties, as in vLLM: ``adjust_logits``); states: each
    row's SamplerState (the engine's sequences keep theirs). The rows that are not greedy draw together
    (``draw``), each at one uniform number from its own generator."""
    return choose(adjust_logits(logits, params, histories, eos, states), params, generators)


def choose(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One token id per row of ``logits`` (already adjusted: ``adjust_logits``): greedy rows their argmax, the
    others drawn together (``draw``)."""
    out = logits.argmax(dim=-1).tolist()
    drawn = [i for i, p in enumerate(params) if not p.greedy]
    if not drawn:
        return out
    u = torch.tensor([_uniform(generators[i]) for i in drawn], dtype=torch.float32, device=logits.device)
    tokens, ok = draw(_take(logits, drawn), [params[i] for i in drawn], u)
    for i, t, good in zip(drawn, tokens.tolist(), ok.tolist()):
        # multinomial raised on such a row, and the step with it for every request of the batch (found in
        # review): a row with no distribution to draw from takes its most likely token; its neighbours draw as
        # they would alone.
        out[i] = t if good else _argmax_finite(logits[i])
    return out


def draw(logits: torch.Tensor, params: list[SamplingParams], u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's token where its CDF (after temperature, min_p, top_k and top_p, as filter_logits keeps them)
    reaches ``u`` (one number in [0, 1) per row); and whether the row has a distribution at all (no NaN, no +inf,
    not all -inf). Rows are computed together (one pass over [rows, V], not one a row: row by row on the CPU cost
    3-16 ms each at a 152k vocabulary), and a row's token depends on its logits and its u alone."""
    dev = logits.device
    temps = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev)
    z = logits.float().div(temps[:, None])
    _mask_min_p(z, [p.min_p for p in params])
    _mask_top_k(z, [p.top_k for p in params])
    tokens = torch.zeros(len(params), dtype=torch.long, device=dev)
    ok = torch.zeros(len(params), dtype=torch.bool, device=dev)
    full = [j for j, p in enumerate(params) if p.top_p >= 1.0]
    if full:
        _put(tokens, ok, full, *_draw_full(z, full, u))
    by_width: dict[int, list[int]] = {}
    for j, p in enumerate(params):
        if p.top_p < 1.0:
            width = p.top_k if 0 < p.top_k < TOP_P_CANDIDATES else TOP_P_CANDIDATES
            by_width.setdefault(min(z.shape[1], width), []).append(j)
    for width, rows in by_width.items():
        top_p = torch.tensor([params[j].top_p for j in rows], dtype=torch.float32, device=dev)
        _put(tokens, ok, rows, *_draw_nucleus(z, rows, width, top_p, u))
    return tokens, ok


def _uniform(gen: torch.Generator | None) -> float:
    return float(torch.rand(1, generator=gen, dtype=torch.float64))


def _take(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """x's rows ``rows`` (x itself when that is all of them: no [rows, vocab] copy)."""
    if len(rows) == x.shape[0] and rows == list(range(len(rows))):
        return x
    return x.index_select(0, torch.tensor(rows, device=x.device))


def _put(tokens, ok, rows: list[int], t: torch.Tensor, good: torch.Tensor) -> None:
    at = torch.tensor(rows, device=tokens.device)
    tokens.index_copy_(0, at, t)
    ok.index_copy_(0, at, good)


def _mask_min_p(z: torch.Tensor, min_ps: list[float]) -> None:
    """Set each row's logits whose probability is below min_p times its most likely token's to -inf (in place),
    as filter_logits: p_i < min_p * p_max is z_i < z_max + log(min_p), with no softmax over the vocabulary."""
    rows = [j for j, m in enumerate(min_ps) if m > 0.0]
    if not rows:
        return
    sub = _take(z, rows)
    floor = sub.amax(-1, keepdim=True) + torch.tensor([min_ps[j] for j in rows], dtype=z.dtype,
                                                       device=z.device).log()[:, None]
    sub.masked_fill_(sub < floor, float("-inf"))
    if sub is not z:
        z.index_copy_(0, torch.tensor(rows, device=z.device), sub)


def _mask_top_k(z: torch.Tensor, ks: list[int]) -> None:
    """Set what lies below each row's k-th largest logit to -inf (in place; ties with the k-th stay, as
    filter_logits keeps them)."""
    vocab = z.shape[1]
    rows = [j for j, k in enumerate(ks) if 0 < k < vocab]
    if not rows:
        return
    sub = _take(z, rows)
    k = torch.tensor([ks[j] - 1 for j in rows], device=z.device)
    kth = sub.topk(max(ks[j] for j in rows), dim=-1).values.gather(1, k[:, None])
    sub.masked_fill_(sub < kth, float("-inf"))
    if sub is not z:
        z.index_copy_(0, torch.tensor(rows, device=z.device), sub)


def _invert(weights: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of non-negative weights, the index whose CDF interval holds u (in [0, 1)) of the total, and whether
    the row has a distribution at all (a finite, positive total). Only an index of positive weight is chosen."""
    cdf = weights.cumsum_(-1)
    total = cdf[:, -1]
    good = torch.isfinite(total) & (total > 0)
    # below the total, so some CDF value lies above it: searchsorted(right) lands on a weight > 0
    t = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    j = torch.searchsorted(cdf, t[:, None].contiguous(), right=True).clamp_(max=cdf.shape[1] - 1)
    return j.squeeze(1), good


def _draw_full(z: torch.Tensor, rows: list[int], u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # NaN or +inf anywhere makes the softmax NaN (and -inf everywhere): such a row has no distribution
    return _invert(torch.softmax(_take(z, rows), -1), _take(u, rows))


def _draw_nucleus(z: torch.Tensor, rows: list[int], width: int, top_p: torch.Tensor,
                  u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw within each row's nucleus (filter_logits: a token stays while the mass before it is below top_p),
    looked for among the row's ``width`` largest logits; a row whose ``width`` keep less than top_p of its mass
    finds it by binning its vocabulary (_wide_nucleus), not by sorting it (12+ ms a row at a 152k vocabulary)."""
    sub = _take(z, rows)
    u = _take(u, rows)
    lse = sub.logsumexp(-1, keepdim=True)
    vals, ids = sub.topk(width, dim=-1)
    probs = (vals - lse).exp_()
    before = probs.cumsum(-1).sub_(probs)
    # the candidates hold less than top_p and not every token the row keeps (after its top_k)
    short = ((before[:, -1] + probs[:, -1] < top_p) & torch.isfinite(lse[:, 0])
             & torch.isfinite(vals[:, -1])).nonzero().squeeze(1)
    j, good = _invert(probs.masked_fill_(before >= top_p[:, None], 0.0), u)
    t = ids.gather(1, j[:, None]).squeeze(1)
    good &= torch.isfinite(lse[:, 0])
    if short.numel():
        t.index_copy_(0, short, _wide_nucleus(sub.index_select(0, short), lse.index_select(0, short),
                                              top_p.index_select(0, short), u.index_select(0, short)))
    return t, good


#: Bins of log-probability (NUCLEUS_BIN_NATS wide, the last one open) that _wide_nucleus sorts a row's vocabulary
#: into: only the bin where the nucleus ends is sorted.
NUCLEUS_BINS = 4096
NUCLEUS_BIN_NATS = 0.01


def _wide_nucleus(sub: torch.Tensor, lse: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw within the nucleus of rows of finite log-normaliser ``lse``, in vocabulary order: the tokens of the
    bins wholly before the one where the mass reaches top_p, and that bin's tokens in descending order while the
    mass before them is below top_p (the order filter_logits keeps them in)."""
    logp = sub - lse
    idx = logp.mul(-1.0 / NUCLEUS_BIN_NATS).clamp_(0, NUCLEUS_BINS - 1).long()
    p = logp.exp_()
    cum = torch.zeros(sub.shape[0], NUCLEUS_BINS, dtype=p.dtype, device=p.device).scatter_add_(1, idx, p).cumsum_(-1)
    edge = (cum < top_p[:, None]).sum(-1, keepdim=True).clamp_(max=NUCLEUS_BINS - 1)
    mass_before = torch.where(edge > 0, cum.gather(1, (edge - 1).clamp(min=0)), 0.0)[:, 0].tolist()
    rows, cols = (idx == edge).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=sub.shape[0]).tolist()
    keep = []
    for at, pv, m, tp in zip(cols.split(counts), p[rows, cols].split(counts), mass_before, top_p.tolist()):
        pv, order = pv.sort(descending=True)
        kept = (pv.cumsum(0) - pv + m) < tp
        keep.append((at.index_select(0, order[kept]), pv[kept]))
    w = p.masked_fill_(idx >= edge, 0.0)
    if keep:
        w.index_put_((torch.cat([torch.full_like(at, r) for r, (at, _) in enumerate(keep)]),
                      torch.cat([at for at, _ in keep])), torch.cat([pv for _, pv in keep]))
    return _invert(w, u)[0]


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
