"""Penalties and log-probabilities of the sampler, and through the engine against transformers' own logits."""

from __future__ import annotations

import math

import pytest
import torch

from warmserve.engine import Engine, load_model
from warmserve.engine.sampler import logprobs, penalize, sample
from warmserve.errors import InvalidArgumentError
from warmserve.protocol import MAX_TOP_LOGPROBS, SamplingParams


def test_presence_and_frequency_penalties_follow_openais_formula():
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0])
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = penalize(logits, p, prompt=[0, 0], output=[3, 3, 1])  # the prompt does not count for these two
    assert out.tolist() == [1.0, 2.0 - 0.25 - 0.5, 3.0, 4.0 - 2 * 0.25 - 0.5]
    assert logits.tolist() == [1.0, 2.0, 3.0, 4.0]  # the caller's row is untouched


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([2.0, -2.0, 3.0, -1.0])
    out = penalize(logits, SamplingParams(repetition_penalty=2.0), prompt=[0], output=[1])
    assert out.tolist() == [1.0, -4.0, 3.0, -1.0]


def test_repetition_comes_before_presence_and_frequency_as_in_vllm():
    """vLLM's apply_penalties: repetition, then frequency, then presence (found in review: the other way round,
    logit 1 with presence 1 and repetition 2 became 0, not -0.5, and the penalised token won the greedy pick)."""
    logits = torch.tensor([1.0, -0.3, 3.0, -1.0])
    p = SamplingParams(repetition_penalty=2.0, presence_penalty=1.0, frequency_penalty=0.5)
    out = penalize(logits, p, prompt=[3], output=[0, 2, 2])
    assert out.tolist() == pytest.approx([1.0 / 2 - 0.5 - 1.0, -0.3, 3.0 / 2 - 2 * 0.5 - 1.0, -1.0 * 2])
    row = torch.tensor([[1.0, -0.3, -1.0]])
    greedy = SamplingParams(temperature=0.0, repetition_penalty=2.0, presence_penalty=1.0)
    assert sample(row, [greedy], [None], [([2], [0])]) == [1]


def test_greedy_with_a_penalty_avoids_the_repeated_token():
    logits = torch.tensor([[0.0, 5.0, 4.9]])
    p = SamplingParams(frequency_penalty=1.0)
    assert sample(logits, [p], [None], [([0], [1])]) == [2]
    assert sample(logits, [SamplingParams()], [None], [([0], [1])]) == [1]


def test_logprobs_are_the_log_softmax_with_the_k_most_likely():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = logprobs(logits, [2, 0], [2, None])
    ref = torch.log_softmax(logits[0], -1)
    assert out[1] is None
    assert math.isclose(out[0].logprob, ref[2].item(), rel_tol=1e-6)
    assert out[0].top_ids == [1, 2]
    assert out[0].top_logprobs == pytest.approx([ref[1].item(), ref[2].item()], rel=1e-6)
    assert logprobs(logits, [2, 0], [0, 0])[1].top_ids == []


@pytest.mark.parametrize("field,value", [("presence_penalty", 2.5), ("frequency_penalty", -3.0),
                                         ("repetition_penalty", 0.0), ("logprobs", MAX_TOP_LOGPROBS + 1),
                                         ("logprobs", -1)])
def test_out_of_range_values_are_refused(field, value):
    with pytest.raises(InvalidArgumentError) as e:
        SamplingParams(**{field: value})
    assert e.value.fields["param"] == field


def test_engine_logprobs_of_greedy_tokens_equal_transformers_log_softmax(demo_dir, pool, hf_model):
    """fp32 checkpoint: our logprobs of each greedy token, and its top-5, against log_softmax of transformers'
    logits for the same sequence."""
    path = demo_dir["llama-20m"]
    k = 5
    lm = load_model(path, pool).wait()
    try:
        with Engine(lm) as eng:
            g = torch.Generator().manual_seed(3)
            prompts = [torch.randint(0, lm.config.vocab_size, (n,), generator=g).tolist() for n in (5, 40)]
            params = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=k)
            for i, p in enumerate(prompts):
                eng.add_request(str(i), p, params)
            toks = {"0": [], "1": []}
            lps = {"0": [], "1": []}
            while eng.has_unfinished():
                for o in eng.step():
                    toks[o.request_id] += o.token_ids
                    lps[o.request_id] += o.logprobs or []
    finally:
        lm.close()
    ref = hf_model(path)
    for i, p in enumerate(prompts):
        out, lp = toks[str(i)], lps[str(i)]
        assert len(out) == len(lp) == 6
        with torch.no_grad():
            hf = torch.log_softmax(ref(torch.tensor([p + out[:-1]])).logits[0, len(p) - 1:].float(), -1)
        mine = torch.tensor([x.logprob for x in lp])
        torch.testing.assert_close(mine, hf[torch.arange(6), torch.tensor(out)], atol=2e-4, rtol=1e-4)
        for step, x in enumerate(lp):
            assert x.top_ids[0] == out[step]  # greedy: the chosen token is the most likely one
            ref_v, ref_i = hf[step].topk(k)
            torch.testing.assert_close(torch.tensor(x.top_logprobs), ref_v, atol=2e-4, rtol=1e-4)
            assert x.top_ids == ref_i.tolist()


@pytest.mark.parametrize("max_batch_tokens", [2048, 16])
def test_engine_prompt_logprobs_equal_transformers_log_softmax(demo_dir, pool, hf_model, max_batch_tokens):
    """Each prompt token's logprob given the ones before it, whole or prefilled in 16-token chunks, with a second
    request decoding beside it; they come once, with the first generated token."""
    path = demo_dir["qwen2-30m"]
    lm = load_model(path, pool).wait()
    try:
        with Engine(lm, max_batch_tokens=max_batch_tokens) as eng:
            g = torch.Generator().manual_seed(5)
            prompt = torch.randint(0, lm.config.vocab_size, (45,), generator=g).tolist()
            eng.add_request("other", prompt[:7], SamplingParams(max_tokens=5, ignore_eos=True))
            eng.add_request("p", prompt, SamplingParams(max_tokens=3, ignore_eos=True, prompt_logprobs=2))
            got = []
            while eng.has_unfinished():
                for o in eng.step():
                    if o.request_id == "p" and o.prompt_logprobs is not None:
                        got.append(o.prompt_logprobs)
                    if o.request_id == "other":
                        assert o.prompt_logprobs is None
    finally:
        lm.close()
    assert len(got) == 1 and len(got[0]) == len(prompt) - 1
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(path)(torch.tensor([prompt])).logits[0, :-1].float(), -1)
    mine = torch.tensor([x.logprob for x in got[0]])
    torch.testing.assert_close(mine, ref[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])], atol=2e-4,
                               rtol=1e-4)
    assert [x.top_ids for x in got[0]] == ref.topk(2).indices.tolist()
