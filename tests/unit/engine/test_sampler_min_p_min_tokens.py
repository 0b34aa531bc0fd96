"""vLLM's min_p and min_tokens in the sampler and the engine. Found in review: both were unknown fields, dropped
without a word, so a client asking for min_tokens=10 got fewer tokens and min_p changed nothing.

min_p: after temperature, tokens whose probability is below min_p x the most likely token's are dropped, before
top-k/top-p (vLLM v1's order), and greedy rows are left alone. min_tokens: until the output has that many tokens,
the EOS ids (unless ignore_eos) and the stop_token_ids cannot be generated (their logits are -inf)."""

from __future__ import annotations

import math

import pytest
import torch

from warmserve.engine import Engine, SamplingParams
from warmserve.engine.sampler import draw, filter_logits, sample
from warmserve.errors import NoRoomHereError

from tiny_checkpoints import TINY_VOCAB

PROBS = [0.5, 0.3, 0.15, 0.05]
GRID = 2000  # uniform numbers (k + 0.5) / GRID: each token is drawn in proportion to its probability, to 1/GRID


def _drawn_shares(row: torch.Tensor, p: SamplingParams, beside: SamplingParams | None = None) -> list[float]:
    """Each token's share of the draws over the grid (one batch of GRID rows), each row of ``p`` batched with a
    row of ``beside`` next to it when given."""
    u = (torch.arange(GRID, dtype=torch.float32) + 0.5) / GRID
    params = [p] * GRID
    if beside is not None:
        params = [q for _ in range(GRID) for q in (p, beside)]
        u = u.repeat_interleave(2)
    tokens, ok = draw(row.expand(len(params), -1).clone(), params, u)
    assert ok.all()
    mine = tokens[::2] if beside is not None else tokens
    return (torch.bincount(mine, minlength=row.shape[0]).float() / GRID).tolist()


def _close(got: list[float], want: list[float]) -> bool:
    return all(abs(g - w) <= 2 / GRID for g, w in zip(got, want))


def test_min_p_drops_tokens_below_min_p_times_the_top_probability():
    row = torch.tensor(PROBS).log()
    p = SamplingParams(temperature=1.0, min_p=0.2)  # 0.2 x 0.5 = 0.1: the 0.05 token goes
    kept = sum(PROBS[:3])
    want = [x / kept for x in PROBS[:3]] + [0.0]
    assert torch.allclose(filter_logits(row, 0, 1.0, min_p=0.2).softmax(-1), torch.tensor(want), atol=1e-6)
    assert _close(_drawn_shares(row, p), want)
    # beside a row without min_p, batched together: each row as alone
    assert _close(_drawn_shares(row, p, beside=SamplingParams(temperature=1.0)), want)
    assert _close(_drawn_shares(row, SamplingParams(temperature=1.0)), PROBS)


def test_min_p_applies_after_temperature():
    row = torch.tensor(PROBS).log()
    # at temperature 2 the probabilities go as sqrt(PROBS): 0.387 / 0.707 of the top is above 0.5, so three stay
    # (before temperature only 0.5 and 0.3 would be at least half the top's 0.5)
    scaled = [math.sqrt(x) for x in PROBS]
    kept = sum(scaled[:3])
    want = [x / kept for x in scaled[:3]] + [0.0]
    assert _close(_drawn_shares(row, SamplingParams(temperature=2.0, min_p=0.5)), want)


def test_min_p_comes_before_top_p_as_in_vllm():
    row = torch.tensor(PROBS).log()
    # min_p 0.2 leaves 0.5, 0.3, 0.15 (renormalised 0.526, 0.316, 0.158): top_p 0.82 then keeps the first two, as
    # 0.842 of the mass lies before the third. top_p first would have kept three (0.8 before the third).
    want = [0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]
    p = SamplingParams(temperature=1.0, min_p=0.2, top_p=0.82)
    assert torch.allclose(filter_logits(row, 0, 0.82, min_p=0.2).softmax(-1), torch.tensor(want), atol=1e-6)
    assert _close(_drawn_shares(row, p), want)


def test_min_p_leaves_greedy_alone():
    row = torch.tensor([[0.0, 3.0, 1.0]])
    assert sample(row, [SamplingParams(min_p=1.0)], [None], [([0], [])]) == [1]


def test_min_tokens_holds_back_eos_and_stop_token_ids_until_the_output_has_them():
    eos = {3}
    row = torch.tensor([[0.0, 1.0, 2.0, 5.0, 4.0]])  # EOS (3) most likely, then 4, then 2
    p = SamplingParams(min_tokens=2, stop_token_ids=[4])
    assert sample(row, [p], [None], [([0], [])], eos=eos) == [2]
    assert sample(row, [p], [None], [([0], [7])], eos=eos) == [2]
    assert sample(row, [p], [None], [([0], [7, 7])], eos=eos) == [3]  # min_tokens reached: EOS may come
    # with ignore_eos the EOS does not end the request anyway: it stays; the stop id is still held back
    assert sample(row, [SamplingParams(min_tokens=2, stop_token_ids=[4], ignore_eos=True)], [None], [([0], [])],
                  eos=eos) == [3]
    # a drawn row: never a held-back token, whatever the draw; stop ids past the vocabulary are no tokens here
    drawn = SamplingParams(temperature=1.0, min_tokens=5, stop_token_ids=[4, 10**6], seed=1)
    for seed in range(50):
        gen = torch.Generator().manual_seed(seed)
        assert sample(row, [drawn], [gen], [([0], [1])], eos=eos)[0] in (0, 1, 2)


def test_the_engine_runs_to_min_tokens_past_an_early_stop_token_and_eos(lm):
    prompt = torch.randint(0, TINY_VOCAB, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    with Engine(lm) as eng:
        free_run = eng.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True))[0]
        x = free_run[1]
        assert x not in free_run[:1]
        early = eng.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True, stop_token_ids=[x]))[0]
        assert early == free_run[:2]  # without min_tokens its second token ends it
        out = eng.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True, stop_token_ids=[x],
                                                    min_tokens=6))[0]
        assert len(out) >= 6 and x not in out[:6] and out[0] == free_run[0]
        assert x not in out[6:-1] and (out[-1] == x or len(out) == 12)
        # the model's EOS, as the engine knows it, held back the same way
        eng.eos = {x}
        assert eng.generate([prompt], SamplingParams(max_tokens=12))[0] == free_run[:2]
        out = eng.generate([prompt], SamplingParams(max_tokens=12, min_tokens=6))[0]
        assert len(out) >= 6 and x not in out[:6]


def test_the_largest_stop_token_id_fails_no_step_of_its_neighbours(lm):
    """Found in review: min_tokens' masking built a tensor of the stop ids, and one past int64 (Cluster accepted
    it then; SamplingParams refuses it now) raised in the step, failing every request of the batch. The largest id
    allowed, past any vocabulary, is left out of the masking."""
    with Engine(lm) as eng:
        eng.add_request("ok", [1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True))
        eng.add_request("big", [4, 5, 6], SamplingParams(max_tokens=4, min_tokens=2, stop_token_ids=(2 ** 63 - 1,),
                                                         ignore_eos=True))
        done = {}
        while eng.has_unfinished():
            for o in eng.step():
                if o.finished:
                    done[o.request_id] = o.finish_reason
    assert done == {"ok": "length", "big": "length"}


def test_a_defaulted_max_tokens_is_never_lowered_below_min_tokens(lm):
    """Found in review: lowering a server-filled max_tokens to the KV room re-ran SamplingParams' checks, and a
    min_tokens above the room was a plain 400 on max_tokens, not the NoRoomHereError a reroute acts on."""
    prompt = list(range(1, 11))
    with Engine(lm, kv_blocks=1) as eng:
        room = eng.kv.total_blocks * eng.kv.block_tokens + 1 - len(prompt)
        wide = lm.max_context - len(prompt)
        eng.add_request("fits", prompt, SamplingParams(max_tokens=wide, max_tokens_defaulted=True, ignore_eos=True))
        with pytest.raises(NoRoomHereError):
            eng.add_request("no", prompt, SamplingParams(max_tokens=wide, max_tokens_defaulted=True,
                                                         ignore_eos=True, min_tokens=room + 5))
