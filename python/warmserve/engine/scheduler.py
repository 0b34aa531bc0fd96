"""Continuous batching: which sequences run in the next step, and how many of their tokens.

Each step spends a token budget: first one token for every running sequence that is decoding, then prompt
chunks of waiting (or partly prefilled) sequences in arrival order, so a long prompt is prefilled over several
steps while others keep decoding. Short prompts go first: a prompt with more than max_batch_tokens /
LONG_PREFILL_FRACTION tokens left to prefill is long, and short ones waiting are admitted ahead of long ones and
keep their tokens of the step from the long prefills running (which still get long_prefill_tokens a step), as
vLLM's long_prefill_token_threshold does; found in review, a 17-token chat waited 30 s behind four 2,000-token
prompts prefilled one after another on a CPU worker. A long prompt is passed so in MAX_OVERTAKES steps at most,
and a preempted one never, so every wait stays bounded.

When the KV cache has no block for a running sequence (decoding, or part way through its prefill), the youngest
running sequence is preempted, down to that one itself: its blocks are freed and it goes back to the head of the
queue to be recomputed from its prompt plus what it has generated so far. A preempted sequence starts again only
when it can have blocks for all of that at once, and a step that preempted admits nobody new.
"""

from __future__ import annotations

import itertools
import operator
from collections import deque
from collections.abc import Sequence as _Seq
from dataclasses import dataclass, field

import torch

from warmserve.engine.kv_cache import KVCache
from warmserve.engine.sampler import SamplerState
from warmserve.protocol import SamplingParams

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"
#: A prompt with more than max_batch_tokens // LONG_PREFILL_FRACTION tokens left to prefill is long (512 of the
#: default 2,048): short ones are admitted ahead of it (the module's docstring).
LONG_PREFILL_FRACTION = 4
#: Steps in which short prompts may be admitted ahead of a waiting long one; then it keeps its place in the queue.
MAX_OVERTAKES = 16


class TokenView(_Seq):
    """A sequence's prompt then its output, read in place: a slice copies only the tokens it holds. Found in
    review: ``Sequence.tokens`` built prompt + output for every chunk of every eager step, so a decode cost time
    in its context's length (10 ms a step for 32 decodes of 32k tokens on the host, at every step of a
    tensor-parallel instance, whose decodes run eagerly)."""

    __slots__ = ("prompt", "output")

    def __init__(self, prompt: list[int], output: list[int]):
        self.prompt, self.output = prompt, output

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    def __getitem__(self, i):
        n = len(self.prompt)
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            if stop <= n:
                return self.prompt[start:stop]
            if start >= n:
                return self.output[start - n:stop - n]
            return self.prompt[start:] + self.output[:stop - n]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"token index {i} is outside the sequence's {len(self)} tokens")
        return self.prompt[i] if i < n else self.output[i - n]

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, TokenView)) else NotImplemented

    __hash__ = None


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    arrival: int
    generator: torch.Generator | None = None
    #: The seed its draws come from (sampler.draw_seed); unused when greedy.
    seed: int = 0
    output: list[int] = field(default_factory=list)
    status: str = WAITING
    #: Tokens whose K/V is in the cache.
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | None = None
    preemptions: int = 0
    #: Steps in which a short prompt was admitted ahead of it while it waited (MAX_OVERTAKES at most).
    overtaken: int = 0
    #: Tokens already reported to the caller.
    num_reported: int = 0
    #: Log-probabilities of each output token, when params.logprobs asks for them (kept across preemption).
    logprobs: list = field(default_factory=list)
    #: Log-probabilities of prompt tokens 1.., when params.prompt_logprobs asks for them (computed once).
    prompt_logprobs: list = field(default_factory=list)
    #: What the sampler keeps between this sequence's steps (its held-back ids, the prompt's seen ids, the output's
    #: counts), kept across preemption with the output it counts (found in review: rebuilt at each step).
    sampler_state: SamplerState = field(default_factory=SamplerState, repr=False)

    @property
    def tokens(self) -> TokenView:
        """The prompt then the output, neither copied (TokenView)."""
        return TokenView(self.prompt, self.output)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.output)


@dataclass
class ScheduledChunk:
    seq: Sequence
    #: First token index (position) computed in this step, and how many.
    start: int
    n: int

    @property
    def samples(self) -> bool:
        """The chunk reaches the sequence's last token, so a new token is sampled after it."""
        return self.start + self.n == self.seq.length


class Scheduler:
    def __init__(self, kv: KVCache, max_batch_tokens: int, max_num_seqs: int):
        self.kv = kv
        self.max_batch_tokens = max_batch_tokens
        #: Tokens the last schedule() allowed (a co-served turn's may be fewer than max_batch_tokens).
        self.step_budget = max_batch_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _ensure_blocks(self, seq: Sequence, upto_tokens: int) -> bool:
        need = -(-upto_tokens // self.kv.block_tokens) - len(seq.blocks)
        while need > 0:
            b = self.kv.allocate()
            if b is None:
                return False
            seq.blocks.append(b)
            need -= 1
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq.blocks)
        seq.blocks = []
        seq.num_computed = 0
        seq.status = WAITING
        seq.preemptions += 1
        self.num_preemptions += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    def free(self, seq: Sequence) -> None:
        self.kv.free(seq.blocks)
        seq.blocks = []

    def _make_room(self, seq: Sequence, upto_tokens: int, scheduled: list[ScheduledChunk]) -> tuple[bool, int]:
        """Give ``seq`` blocks up to ``upto_tokens``, preempting the youngest running sequence while the cache has
        none, down to ``seq`` itself. A victim that ``scheduled`` holds a chunk of loses it. Returns (whether seq
        got them, tokens of budget the lost chunks give back)."""
        refund = 0
        while not self._ensure_blocks(seq, upto_tokens):
            victim = self.running[-1]
            for c in scheduled:
                if c.seq is victim:
                    scheduled.remove(c)
                    refund += c.n
                    break
            self._preempt(victim)
            if victim is seq:
                return False, refund
        return True, refund

    def _admit_tokens(self, seq: Sequence, n: int) -> int:
        """Tokens a waiting sequence needs blocks for to start with a chunk of n: a preempted one needs all of
        them, so it starts again only when it can reach where it was. Otherwise one whose pages another instance
        holds would recompute the same chunks, preempt itself again, and so on for as long as they are held."""
        return seq.length if seq.preemptions else seq.num_computed + n

    @property
    def long_prefill_tokens(self) -> int:
        """Prefill tokens left above which a prompt is long (LONG_PREFILL_FRACTION)."""
        return max(1, self.max_batch_tokens // LONG_PREFILL_FRACTION)

    def _long(self, seq: Sequence) -> bool:
        return seq.length - seq.num_computed > self.long_prefill_tokens

    def _admission_order(self) -> tuple[list[Sequence], int]:
        """The waiting sequences in the order they are admitted, and how many short ones lead it: short prompts
        ahead of long ones (each first come, first served), up to the first that keeps its place (a preempted one,
        or a long one passed in MAX_OVERTAKES steps already), from which on the queue's own order holds."""
        short, held = [], []
        for i, seq in enumerate(self.waiting):
            if seq.preemptions or (self._long(seq) and seq.overtaken >= MAX_OVERTAKES):
                return short + held + list(itertools.islice(self.waiting, i, None)), len(short)
            (held if self._long(seq) else short).append(seq)
        return short + held, len(short)

    def _long_cap(self, budget: int, order: list[Sequence], n_short: int, running: int) -> int:
        """Tokens of this step the long prefills of running sequences may take together: what the short prompts
        that lead ``order`` (as many as max_num_seqs admits beside ``running``) leave, at least
        long_prefill_tokens, so that long ones go on too."""
        room = max(0, self.max_num_seqs - running)
        reserve = sum(seq.length - seq.num_computed for seq in order[:min(n_short, room)])
        return max(self.long_prefill_tokens, budget - reserve)

    def _can_have(self, blocks: int) -> bool:
        """Whether the cache could give this many more blocks now, counted without mapping any: a preempted
        sequence waiting for its whole length would otherwise map it and give it back at every step. (A
        tensor-parallel shard's mapper maps nothing while scheduling, so there it takes the free blocks alone
        whatever its pool says: every rank answers the same.)"""
        kv = self.kv
        short = blocks - kv.num_free_mapped
        return short <= 0 or (kv.mapper is not None and kv.mapper.mappable(kv.next_unmapped(short)) >= short)

    def schedule(self, max_tokens: int | None = None) -> list[ScheduledChunk]:
        """The chunks of the next step: at most ``max_tokens`` tokens (None: max_batch_tokens, never more)."""
        budget = self.max_batch_tokens if max_tokens is None else min(max_tokens, self.max_batch_tokens)
        self.step_budget = budget  # what blocks_wanted counts by: the step a co-served turn allows, not more
        decodes: list[ScheduledChunk] = []
        prefills: list[ScheduledChunk] = []
        preempted = self.num_preemptions
        # 1. decodes, oldest first; preempt the youngest when the cache is full
        for seq in list(self.running):
            if seq.status != RUNNING or seq.num_computed != seq.length - 1:
                continue
            if budget <= 0:
                break
            ok, refund = self._make_room(seq, seq.length, decodes)
            budget += refund
            if not ok:
                break
            decodes.append(ScheduledChunk(seq, seq.num_computed, 1))
            budget -= 1
        # 2. unfinished prefills of running sequences: one the cache has no block for preempts too (the youngest
        # first, itself last), or half-prefilled sequences that hold blocks and wait for more would never end
        # when the pool is shared (found in review: two instances on one pool, each holding half a prefill);
        # the long ones leave the short prompts waiting their tokens (_long_cap)
        order, n_short = self._admission_order()
        long_cap = self._long_cap(budget, order, n_short, len(self.running))
        for seq in list(self.running):
            if budget <= 0:
                break
            if seq.status != RUNNING:
                continue  # preempted just now for an older one
            if seq.num_computed < seq.length - 1 and not any(c.seq is seq for c in decodes):
                long = self._long(seq)
                n = min(seq.length - seq.num_computed, budget, long_cap if long else budget)
                if n <= 0:
                    continue
                ok, refund = self._make_room(seq, seq.num_computed + n, decodes)
                budget += refund
                if not ok:
                    break
                prefills.append(ScheduledChunk(seq, seq.num_computed, n))
                budget -= n
                long_cap -= n if long else 0
        # 3. new ones from the queue (short prompts first: _admission_order), unless this step preempted: the
        # blocks just freed are for those running
        passed = -1  # the queue position of the last short prompt admitted ahead of a long one
        place = {id(seq): i for i, seq in enumerate(self.waiting)}
        for seq in order:
            if self.num_preemptions != preempted or budget <= 0 or len(self.running) >= self.max_num_seqs:
                break
            n = min(seq.length - seq.num_computed, budget)
            upto = self._admit_tokens(seq, n)
            if seq.preemptions and not self._can_have(-(-upto // self.kv.block_tokens) - len(seq.blocks)):
                break
            if not self._ensure_blocks(seq, upto):
                self.kv.free(seq.blocks)
                seq.blocks = []
                break
            self.waiting.remove(seq)
            seq.status = RUNNING
            self.running.append(seq)
            prefills.append(ScheduledChunk(seq, seq.num_computed, n))
            budget -= n
            if not self._long(seq):
                passed = max(passed, place[id(seq)])
        for seq in self.waiting:
            if place[id(seq)] < passed and self._long(seq):
                seq.overtaken += 1
        return prefills + decodes

    def blocks_wanted(self) -> int:
        """KV blocks the next ``schedule()`` would allocate if the cache had them (preemption aside), counted
        without allocating: what a cache that maps only ahead of a step (a tensor-parallel shard, worker/tp.py)
        must map first. Follows ``schedule``'s order and token budget."""
        bt = self.kv.block_tokens

        def short(seq: Sequence, upto_tokens: int) -> int:
            return max(0, -(-upto_tokens // bt) - len(seq.blocks))

        # Found in review: it counted a max_batch_tokens chunk while a co-served engine steps by its turn's tokens,
        # so a stalled engine asked the policy to evict prewarms for blocks its step would not use.
        budget, want, decoding = self.step_budget, 0, set()
        for seq in self.running:
            if seq.status != RUNNING or seq.num_computed != seq.length - 1:
                continue
            if budget <= 0:
                break
            want += short(seq, seq.length)
            budget -= 1
            decoding.add(id(seq))
        order, n_short = self._admission_order()
        long_cap = self._long_cap(budget, order, n_short, len(self.running))
        for seq in self.running:
            if budget <= 0:
                break
            if seq.num_computed < seq.length - 1 and id(seq) not in decoding:
                long = self._long(seq)
                n = min(seq.length - seq.num_computed, budget, long_cap if long else budget)
                if n <= 0:
                    continue
                want += short(seq, seq.num_computed + n)
                budget -= n
                long_cap -= n if long else 0
        admitted = len(self.running)
        for seq in order:
            if budget <= 0 or admitted >= self.max_num_seqs:
                break
            n = min(seq.length - seq.num_computed, budget)
            want += short(seq, self._admit_tokens(seq, n))
            budget -= n
            admitted += 1
        return want

    def finish(self, seq: Sequence, reason: str, stop_reason=None) -> None:
        seq.status = FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
        self.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
