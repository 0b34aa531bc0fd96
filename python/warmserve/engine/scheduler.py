"""Continuous batching: which sequences run in the next step, and how many of their tokens.

Each step spends a token budget: first one token for every running sequence that is decoding, then prompt
chunks of waiting (or partly prefilled) sequences in arrival order, so a long prompt is prefilled over several
steps while others keep decoding. When the KV cache has no block for a decoding sequence, the youngest running
sequence is preempted: its blocks are freed and it goes back to the head of the queue to be recomputed from
its prompt plus what it has generated so far.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from warmserve.engine.kv_cache import KVCache
from warmserve.protocol import SamplingParams

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


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
    #: Tokens already reported to the caller.
    num_reported: int = 0
    #: Log-probabilities of each output token, when params.logprobs asks for them (kept across preemption).
    logprobs: list = field(default_factory=list)
    #: Log-probabilities of prompt tokens 1.., when params.prompt_logprobs asks for them (computed once).
    prompt_logprobs: list = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output if self.output else self.prompt

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

    def schedule(self) -> list[ScheduledChunk]:
        budget = self.max_batch_tokens
        decodes: list[ScheduledChunk] = []
        prefills: list[ScheduledChunk] = []
        # 1. decodes, oldest first; preempt the youngest when the cache is full
        for seq in list(self.running):
            if seq.status != RUNNING or seq.num_computed != seq.length - 1:
                continue
            if budget <= 0:
                break
            while not self._ensure_blocks(seq, seq.length):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status != RUNNING:
                break
            decodes.append(ScheduledChunk(seq, seq.num_computed, 1))
            budget -= 1
        # 2. unfinished prefills of running sequences, then new ones from the queue
        for seq in self.running:
            if budget <= 0:
                break
            if seq.num_computed < seq.length - 1 and not any(c.seq is seq for c in decodes):
                n = min(seq.length - seq.num_computed, budget)
                if not self._ensure_blocks(seq, seq.num_computed + n):
                    break
                prefills.append(ScheduledChunk(seq, seq.num_computed, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            n = min(seq.length - seq.num_computed, budget)
            if not self._ensure_blocks(seq, seq.num_computed + n):
                self.kv.free(seq.blocks)
                seq.blocks = []
                break
            self.waiting.popleft()
            seq.status = RUNNING
            self.running.append(seq)
            prefills.append(ScheduledChunk(seq, seq.num_computed, n))
            budget -= n
        return prefills + decodes

    def blocks_wanted(self) -> int:
        """KV blocks the next ``schedule()`` would allocate if the cache had them (preemption aside), counted
        without allocating: what a cache that maps only ahead of a step (a tensor-parallel shard, worker/tp.py)
        must map first. Follows ``schedule``'s order and token budget."""
        bt = self.kv.block_tokens

        def short(seq: Sequence, upto_tokens: int) -> int:
            return max(0, -(-upto_tokens // bt) - len(seq.blocks))

        budget, want, decoding = self.max_batch_tokens, 0, set()
        for seq in self.running:
            if seq.status != RUNNING or seq.num_computed != seq.length - 1:
                continue
            if budget <= 0:
                break
            want += short(seq, seq.length)
            budget -= 1
            decoding.add(id(seq))
        for seq in self.running:
            if budget <= 0:
                break
            if seq.num_computed < seq.length - 1 and id(seq) not in decoding:
                n = min(seq.length - seq.num_computed, budget)
                want += short(seq, seq.num_computed + n)
                budget -= n
        admitted = len(self.running)
        for seq in self.waiting:
            if budget <= 0 or admitted >= self.max_num_seqs:
                break
            n = min(seq.length - seq.num_computed, budget)
            want += short(seq, seq.num_computed + n)
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
