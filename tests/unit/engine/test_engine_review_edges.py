"""Engine edges from review: generate() whose later prompt is refused leaves nothing queued; the KV cap counts the
tokens that get K/V (the last sampled one never does); a closed engine says it has no work, and its KV calls raise
ClosedError."""

from __future__ import annotations

import pytest
import torch

from warmserve.engine import Engine, SamplingParams
from warmserve.errors import ClosedError, PromptTooLongError


def _prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(2, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_generate_refusing_a_later_prompt_leaves_the_earlier_ones_nothing(lm):
    with Engine(lm) as eng:
        params = SamplingParams(max_tokens=8, ignore_eos=True)
        with pytest.raises(PromptTooLongError):
            eng.generate([_prompt(10, 1), _prompt(lm.max_context + 1, 2)], params)
        assert (eng.has_unfinished(), eng.num_running, eng.num_waiting, eng.kv.num_used) == (False, 0, 0, 0)
        assert eng.step() == []
        # and the engine goes on serving
        assert len(eng.generate([_prompt(10, 1)], params)[0]) == 8


def test_a_request_whose_cached_tokens_fill_the_kv_cap_exactly_runs(lm):
    """prompt + max_tokens = cap + 1: K/V is written for positions 0 .. cap - 1 only."""
    with Engine(lm, kv_blocks=1) as eng:
        cap = eng.kv.total_blocks * eng.kv.block_tokens
        prompt = _prompt(200, 1)
        eng.add_request("fits", prompt, SamplingParams(max_tokens=cap + 1 - len(prompt), ignore_eos=True))
        toks, reason, peak = [], None, 0
        while eng.has_unfinished():
            for o in eng.step():
                toks += o.token_ids
                reason = o.finish_reason
            peak = max(peak, eng.kv.num_used)
        assert (len(toks), reason, peak) == (cap + 1 - len(prompt), "length", 1)
        with pytest.raises(PromptTooLongError) as err:
            eng.add_request("over", prompt, SamplingParams(max_tokens=cap + 2 - len(prompt), ignore_eos=True))
        assert (err.value.blocks_needed, err.value.kv_blocks) == (2, 1)
        assert "need 2 KV blocks" in str(err.value)


def test_a_closed_engine_has_no_work_and_its_kv_calls_raise_closed_error(lm):
    eng = Engine(lm)
    eng.add_request("a", _prompt(5), SamplingParams(max_tokens=4))
    eng.close()
    assert (eng.has_unfinished(), eng.num_running, eng.num_waiting) == (False, 0, 0)
    assert eng.abort("a") is False
    for call in (eng.kv_stats, lambda: eng.max_kv_blocks, lambda: eng.set_kv_target_free_blocks(2),
                 eng.raise_kv_cap, eng.step, lambda: eng.add_request("b", [1], None)):
        with pytest.raises(ClosedError):
            call()
