"""Our forward against transformers' implementation of the same checkpoint (a reference nobody here wrote)."""

from __future__ import annotations

import pytest
import torch

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.demo import SMALL_MODELS

from tiny_checkpoints import TINY


def _prompts(vocab: int, lengths, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _check_logits(path, pool, hf_model, lengths, decode_steps, max_batch_tokens=2048, atol=2e-4):
    lm = load_model(path, pool).wait()
    try:
        eng = Engine(lm, max_batch_tokens=max_batch_tokens)
        eng.record_logits = True
        prompts = _prompts(lm.config.vocab_size, lengths)
        params = SamplingParams(max_tokens=decode_steps + 1, ignore_eos=True)
        for i, p in enumerate(prompts):
            eng.add_request(str(i), p, params)
        ours = {str(i): [] for i in range(len(prompts))}
        outs = {str(i): [] for i in range(len(prompts))}
        while eng.has_unfinished():
            for o in eng.step():
                outs[o.request_id] += o.token_ids
            for rid, row in eng.last_logits.items():
                ours[rid].append(row)
            eng.last_logits = {}
        eng.close()
    finally:
        lm.close()
    ref = hf_model(path)
    worst = 0.0
    for i, p in enumerate(prompts):
        rid = str(i)
        seq = p + outs[rid][:-1]
        with torch.no_grad():
            hf_logits = ref(torch.tensor([seq])).logits[0, len(p) - 1:].float()
        mine = torch.stack(ours[rid])
        assert mine.shape == hf_logits.shape  # prefill (first row) and every decode step
        worst = max(worst, (mine - hf_logits).abs().max().item())
        torch.testing.assert_close(mine, hf_logits, atol=atol, rtol=1e-4)
    return worst


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_logits_match_transformers_on_prefill_and_decode(name, demo_dir, pool, hf_model):
    # lengths span one block boundary (256 tokens) so attention reads two pages of KV
    _check_logits(demo_dir[name], pool, hf_model, lengths=(3, 17, 64, 261), decode_steps=6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_logits_match_for_rope_scaling_window_and_bias_variants(name, tiny_dir, pool, hf_model):
    # positions past the original context (rope scaling) and past the sliding window (mistral)
    _check_logits(tiny_dir[name], pool, hf_model, lengths=(5, 40, 300), decode_steps=4)


def test_equal_length_prompts_share_one_attention_call_and_match(demo_dir, pool, hf_model):
    # three fresh 17-token prompts back to back run as one dense SDPA batch; the 40-token one runs alone
    _check_logits(demo_dir["qwen2-30m"], pool, hf_model, lengths=(17, 17, 17, 40), decode_steps=3)


def test_chunked_prefill_gives_the_same_logits(demo_dir, pool, hf_model):
    # a 64-token budget cuts the long prompts into chunks attending to cache written by earlier steps
    _check_logits(demo_dir["llama-20m"], pool, hf_model, lengths=(100, 7, 300), decode_steps=3, max_batch_tokens=64)


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_greedy_generation_matches_transformers_token_for_token(name, demo_dir, pool, hf_model):
    path = demo_dir[name]
    lm = load_model(path, pool).wait()
    try:
        with Engine(lm) as eng:
            prompts = _prompts(lm.config.vocab_size, (4, 150), seed=1)
            outs = eng.generate(prompts, SamplingParams(max_tokens=64, ignore_eos=True))
    finally:
        lm.close()
    ref = hf_model(path)
    for p, o in zip(prompts, outs):
        assert len(o) == 64
        r = ref.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=64,
                         min_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert r[0, len(p):].tolist() == o
