"""How a step's token budget is split: between decodes and a co-served turn's few tokens, and between short and
long prompts (scheduler.py: LONG_PREFILL_FRACTION and ``_long_cap``). Driven on the real KV cache, each step's
chunks committed as the engine commits them."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from warmserve.engine.kv_cache import KVCache
from warmserve.engine.scheduler import Scheduler, Sequence
from warmserve.protocol import SamplingParams

BLOCK_TOKENS = 16


def _scheduler(max_batch_tokens, max_num_seqs, blocks=1024):
    cfg = SimpleNamespace(num_kv_heads=1, head_dim=4, num_layers=1)
    kv = KVCache(cfg, torch.zeros(blocks, 2 * BLOCK_TOKENS * 4), blocks, BLOCK_TOKENS)
    return Scheduler(kv, max_batch_tokens=max_batch_tokens, max_num_seqs=max_num_seqs)


def _step(s, *seqs_to_add, max_tokens=None):
    for seq in seqs_to_add:
        s.add(seq)
    chunks = s.schedule(max_tokens)
    for c in chunks:
        c.seq.num_computed += c.n  # what the engine's step computed
        if c.samples:
            c.seq.output.append(0)  # and the token it sampled at the end of a prompt or a decode
    return {c.seq.request_id: c.n for c in chunks}


def _seq(name, tokens, arrival):
    return Sequence(name, list(range(tokens)), SamplingParams(max_tokens=4), arrival)


def test_a_quarter_of_the_budget_is_the_longest_short_prompt():
    """Of the default 2,048-token budget, a prompt of 512 tokens is short (admitted ahead of a long one queued
    before it, which takes the rest), one of 513 long (first come, first served)."""
    s = _scheduler(2048, 8)
    assert s.long_prefill_tokens == 512
    assert _step(s, _seq("long", 3000, 0), _seq("short", 512, 1)) == {"short": 512, "long": 1536}
    s = _scheduler(2048, 8)
    assert _step(s, _seq("long", 3000, 0), _seq("513", 513, 1)) == {"long": 2048}


def test_a_long_prefill_keeps_the_budget_when_no_short_prompt_can_be_admitted_beside_it():
    """max_num_seqs 1: while the long prompt runs, the short one waiting cannot join the step, so nothing is held
    back for it and the long prefill takes the whole budget (its 1,952 tokens left), not the budget less the short
    prompt's 100."""
    s = _scheduler(2048, 1)
    assert _step(s, _seq("long", 4000, 0)) == {"long": 2048}
    assert _step(s, _seq("short", 100, 1)) == {"long": 1952}
    assert [q.request_id for q in s.waiting] == ["short"]


def test_a_turn_of_fewer_tokens_than_decoding_sequences_decodes_the_oldest_only():
    """A co-served turn allows 2 tokens (``schedule(max_tokens)``) while 3 sequences decode: the 2 oldest decode,
    the third waits for the next step rather than passing the turn's budget."""
    s = _scheduler(64, 8)
    assert _step(s, *(_seq(f"r{i}", 4, i) for i in range(3))) == {"r0": 4, "r1": 4, "r2": 4}
    assert _step(s, max_tokens=2) == {"r0": 1, "r1": 1}
    assert s.step_budget == 2
    assert _step(s) == {"r0": 1, "r1": 1, "r2": 1}


def test_no_more_sequences_are_admitted_than_max_num_seqs():
    s = _scheduler(64, 2)
    assert _step(s, *(_seq(f"r{i}", 4, i) for i in range(3))) == {"r0": 4, "r1": 4}
    assert len(s.running) == 2 and [q.request_id for q in s.waiting] == ["r2"]
