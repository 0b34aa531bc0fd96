"""Scheduling a serving user would notice (review, 2026-12): a long prompt among a steady stream of short ones,
requests preempted again and again, aborts of a request mid-prefill or while preempted, token budgets below a
block and one sequence at a time. None was found broken; these keep it so: order stays first come, first served
after preemption (a preempted request goes back to the queue's head and the youngest running one is the victim),
so every request's wait is bounded, and a recomputed request gives the roomy run's tokens."""

from __future__ import annotations

import random

import pytest
import torch

from warmserve.engine import Engine, SamplingParams

#: Steps within which the long request ends in the stream below: it needs a few dozen; FCFS bounds it whatever
#: keeps arriving, so a starved one (the stream never ends) runs past it.
LONG_WAIT_BOUND = 400


def _prompt(n, seed):
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run(eng, prompts, params, on_step=None):
    """Drive to the end; (tokens per request, finished outputs per request). on_step(eng) runs before each step."""
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p, params[i])
    out, fin = {}, {}
    for _ in range(20000):
        if not eng.has_unfinished():
            break
        if on_step is not None:
            on_step(eng)
        for o in eng.step():
            out.setdefault(o.request_id, []).extend(o.token_ids)
            fin[o.request_id] = fin.get(o.request_id, 0) + o.finished
    assert not eng.has_unfinished()
    return out, fin


@pytest.mark.parametrize("max_batch_tokens", [64, 256])
def test_a_long_prompt_in_a_stream_of_short_ones_ends_within_a_bound(lm, max_batch_tokens):
    rng = random.Random(0)

    def short(i):
        return _prompt(rng.randint(150, 250), 100 + i), SamplingParams(max_tokens=rng.randint(20, 120),
                                                                       ignore_eos=True)
    long_p, long_sp = _prompt(900, 1), SamplingParams(max_tokens=30, ignore_eos=True)
    with Engine(lm) as eng:
        want = eng.generate([long_p], long_sp)[0]
    # 4 blocks: the long request needs all of them, each short one 1 or 2, so they preempt one another
    with Engine(lm, kv_blocks=4, max_batch_tokens=max_batch_tokens, max_num_seqs=4) as eng:
        n = 0
        for n in range(3):
            eng.add_request(f"s{n}", *short(n))
        for _ in range(5):
            eng.step()
        eng.add_request("long", long_p, long_sp)
        got, ended = [], None
        for step in range(LONG_WAIT_BOUND):
            for o in eng.step():
                if o.request_id == "long":
                    got += o.token_ids
                    ended = step if o.finished else None
            if ended is not None:
                break
            if eng.num_waiting < 3:  # the stream never dries up
                n += 1
                eng.add_request(f"s{n}", *short(n))
        assert ended is not None, f"the long request waited {LONG_WAIT_BOUND} steps behind {n} short ones"
        assert got == want
        for rid in list(eng.seqs):
            eng.abort(rid)
        eng.step()
        assert eng.kv_stats().kv_blocks_used == 0


@pytest.mark.parametrize("when", ["mid_prefill", "preempted_waiting", "recomputing"])
def test_an_abort_mid_prefill_or_while_preempted_frees_its_blocks_and_leaves_the_others(lm, when):
    prompts = [_prompt(300, i) for i in range(4)]
    params = [SamplingParams(max_tokens=100, ignore_eos=True)] * 4
    with Engine(lm) as eng:
        want = eng.generate(prompts, params[0])
    cond = {
        "mid_prefill": lambda s: s.status == "running" and 0 < s.num_computed < len(s.prompt),
        "preempted_waiting": lambda s: s.status == "waiting" and s.preemptions > 0,
        "recomputing": lambda s: s.status == "running" and s.preemptions > 0 and s.num_computed < s.length - 1,
    }[when]
    seen = []

    def abort_one(eng):
        s = eng.seqs.get("1")
        if s is not None and cond(s):
            seen.append(len(s.blocks))
            assert eng.abort("1")
            eng.set_kv_target_free_blocks(0)  # a shrink while others wait or are preempted
    with Engine(lm, kv_blocks=3, max_batch_tokens=100, target_free_blocks=2) as eng:
        out, fin = _run(eng, prompts, params, abort_one)
        assert seen, f"request 1 was never {when}"
        assert fin == {str(i): 1 for i in range(4)}
        assert [out[str(i)] for i in (0, 2, 3)] == [want[i] for i in (0, 2, 3)]
        assert eng.kv_stats().kv_blocks_used == 0


@pytest.mark.parametrize("kw", [dict(kv_blocks=2, max_batch_tokens=7), dict(kv_blocks=3, max_batch_tokens=1),
                                dict(max_num_seqs=1, max_batch_tokens=100), dict(kv_blocks=2, max_num_seqs=1),
                                dict(kv_blocks=3, max_batch_tokens=255)], ids=str)
def test_budgets_below_a_block_and_one_sequence_give_a_roomy_runs_tokens(lm, kw):
    rng = random.Random(3)
    prompts = [_prompt(rng.randint(100, 400), i) for i in range(5)]
    params = [SamplingParams(max_tokens=rng.randint(20, 100), ignore_eos=True) for _ in prompts]
    with Engine(lm) as eng:
        want, _ = _run(eng, prompts, params)
    with Engine(lm, **kw) as eng:
        got, fin = _run(eng, prompts, params)
        assert fin == {str(i): 1 for i in range(5)}
        assert eng.kv_stats().kv_blocks_used == 0
    assert got == want
