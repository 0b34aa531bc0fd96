"""The tied-embedding demo (qwen2-30m) talks noise like the others: its unit-scale embedding, which is its output
head too, made logits with a std of 23 dominated by the input token's own row, and greedy decoding emitted one
token forever ('Once upon a time' -> 'eeee...')."""

from __future__ import annotations

import statistics

import torch

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.tokenizer import Tokenizer

PROMPTS = ("Once upon a time", "def f(x): return", "Hello world")


def _greedy(path: str, pool) -> tuple[list[list[int]], float]:
    """Greedy tokens per prompt, and the median over steps of the logits' std across the vocabulary."""
    tok = Tokenizer(path)
    lm = load_model(path, pool).wait()
    try:
        with Engine(lm) as eng:
            eng.record_logits = True
            for i, p in enumerate(PROMPTS):
                eng.add_request(str(i), tok.encode(p), SamplingParams(max_tokens=16, ignore_eos=True))
            outs, stds = {str(i): [] for i in range(len(PROMPTS))}, []
            while eng.has_unfinished():
                for o in eng.step():
                    outs[o.request_id] += o.token_ids
                stds += [torch.as_tensor(row).float().std().item() for row in eng.last_logits.values()]
                eng.last_logits = {}
    finally:
        lm.close()
    return [outs[str(i)] for i in range(len(PROMPTS))], statistics.median(stds)


def test_qwen2_demo_output_varies_and_its_logits_spread_like_llamas(demo_dir, pool):
    qwen, qwen_std = _greedy(demo_dir["qwen2-30m"], pool)
    _, llama_std = _greedy(demo_dir["llama-20m"], pool)
    for tokens in qwen:
        assert len(set(tokens)) > 1, tokens  # not one token forever
    assert len({tuple(t) for t in qwen}) == len(PROMPTS)  # and the prompt matters
    assert 0.5 < qwen_std / llama_std < 2.0, (qwen_std, llama_std)
