"""Short prompts are admitted ahead of long ones (scheduler.py: LONG_PREFILL_FRACTION, MAX_OVERTAKES). Found in
review: on a CPU worker a 17-token chat waited 30 s behind four 2,000-token prompts prefilled one after another.
Every request still gets the tokens it gets alone, a long prompt is passed in MAX_OVERTAKES steps at most, and the
blocks a step takes are still what blocks_wanted counted (a tensor-parallel shard maps by it)."""

from __future__ import annotations

import torch

from warmserve.engine import Engine, SamplingParams
from warmserve.engine.scheduler import MAX_OVERTAKES

from kv_counting import count_allocations

GREEDY = SamplingParams(max_tokens=6, ignore_eos=True)


def _prompt(n, seed):
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _alone(lm, prompts):
    with Engine(lm) as eng:
        return eng.generate(prompts, GREEDY)


def test_a_short_prompt_behind_long_ones_gets_its_first_token_at_the_next_step(lm):
    longs = [_prompt(300, s) for s in range(4)]
    chat = _prompt(10, 9)
    want = _alone(lm, longs + [chat])
    with Engine(lm, max_batch_tokens=256, max_num_seqs=8) as eng:  # long: more than 64 tokens left to prefill
        for i, p in enumerate(longs):
            eng.add_request(f"long{i}", p, GREEDY)
        got, first_step = {}, {}
        for step in range(200):
            if step == 1:
                eng.add_request("chat", chat, GREEDY)
            for o in eng.step():
                got.setdefault(o.request_id, []).extend(o.token_ids)
                if o.token_ids:
                    first_step.setdefault(o.request_id, step)
            if not eng.has_unfinished():
                break
    assert [got[f"long{i}"] for i in range(4)] + [got["chat"]] == want
    # added before step 1, first token at step 1 (before: after the longs queued ahead of it, at step 4)
    assert first_step["chat"] == 1, first_step
    assert first_step["long0"] < first_step["long1"] < first_step["long2"] < first_step["long3"]


def test_a_long_prompt_in_a_stream_of_short_ones_is_passed_in_few_steps_and_ends(lm):
    long_p = _prompt(400, 1)
    want = _alone(lm, [long_p])[0]
    with Engine(lm, max_batch_tokens=64, max_num_seqs=4) as eng:  # long: more than 16 tokens left
        n = 0
        eng.add_request("s0", _prompt(8, 100), GREEDY)
        eng.step()
        eng.add_request("long", long_p, GREEDY)
        seq = eng.seqs["long"]
        got, ended, admitted = [], None, None
        for step in range(400):
            for o in eng.step():
                if o.request_id == "long":
                    got += o.token_ids
                    ended = step if o.finished else None
            admitted = step if admitted is None and seq.status == "running" else admitted
            assert seq.overtaken <= MAX_OVERTAKES
            if ended is not None:
                break
            while eng.num_waiting < 3:  # short chats never stop arriving
                n += 1
                eng.add_request(f"s{n}", _prompt(8, 100 + n), GREEDY)
    assert ended is not None and got == want
    assert admitted is not None and admitted <= MAX_OVERTAKES + 1, admitted


def test_blocks_wanted_counts_what_a_step_takes_with_short_and_long_prompts(lm):
    with Engine(lm, max_batch_tokens=128) as eng:
        taken = count_allocations(eng)
        for i in range(3):
            eng.add_request(f"long{i}", _prompt(260 + 9 * i, i), GREEDY)
        step = 0
        while eng.has_unfinished():
            if step in (1, 2, 4):
                eng.add_request(f"chat{step}", _prompt(12 + step, 50 + step), GREEDY)
            wanted = eng.scheduler.blocks_wanted()
            taken.clear()
            eng.step()
            assert eng.scheduler.num_preemptions == 0
            assert len(taken) == wanted, step
            step += 1
