"""A decode batch of unequal lengths pads the short sequences' key columns. Those columns are masked, but their
K/V are still read: if they point at rows nothing has written, they hold whatever the reused page held (another
model's weights, another dtype), and one NaN/Inf bit pattern there turns the short sequence's logits NaN."""

from __future__ import annotations

import pytest
import torch

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint
from warmserve.memory import PagePool

from tiny_checkpoints import TINY_VOCAB

#: A short prompt batched with one over a block boundary, so the short one's decode row has padding columns.
LENGTHS = (5, 260)
DECODE_STEPS = 3


def _prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def _serve(lm, prompts, poison_kv: bool = False):
    """Per request: (logits of every sampled row, tokens); poison_kv fills the mapped KV blocks with NaN first."""
    eng = Engine(lm)
    try:
        eng.record_logits = True
        if poison_kv:
            rpb = eng.kv.rows_per_block
            mapped = [b for b, m in enumerate(eng.kv.mapped) if m]
            # the two requests need three blocks; all must come from the poisoned ones
            assert len(mapped) * eng.kv.block_tokens >= sum(LENGTHS) + 2 * eng.kv.block_tokens
            for b in mapped:
                eng.kv.rows[b * rpb:(b + 1) * rpb].fill_(float("nan"))
        params = SamplingParams(max_tokens=DECODE_STEPS + 1, ignore_eos=True)
        for i, p in enumerate(prompts):
            eng.add_request(str(i), p, params)
        logits = {str(i): [] for i in range(len(prompts))}
        tokens = {str(i): [] for i in range(len(prompts))}
        while eng.has_unfinished():
            for o in eng.step():
                tokens[o.request_id] += o.token_ids
            for rid, row in eng.last_logits.items():
                logits[rid].append(row.float())
            eng.last_logits = {}
        return {rid: (torch.stack(logits[rid]), tokens[rid]) for rid in logits}
    finally:
        eng.close()


def _assert_matches_transformers(ref, prompts, got, atol):
    for i, p in enumerate(prompts):
        mine, out = got[str(i)]
        assert torch.isfinite(mine).all(), f"request {i} ({len(p)} tokens): non-finite logits at steps " \
            f"{sorted(set(torch.nonzero(~torch.isfinite(mine))[:, 0].tolist()))}"
        with torch.no_grad():
            want = ref(torch.tensor([p + out[:-1]])).logits[0, len(p) - 1:].float()
        torch.testing.assert_close(mine, want, atol=atol, rtol=1e-3)


@pytest.mark.parametrize("name", ["tiny-bias", "tiny-mistral"])
def test_padding_columns_never_read_unwritten_kv_rows(name, tiny_dir, pool, hf_model):
    lm = load_model(tiny_dir[name], pool).wait()
    try:
        prompts = _prompts(lm.config.vocab_size)
        got = _serve(lm, prompts, poison_kv=True)
    finally:
        lm.close()
    _assert_matches_transformers(hf_model(tiny_dir[name]), prompts, got, atol=2e-4)


def test_kv_pages_reused_from_an_evicted_float32_model_serve_a_float16_model(tmp_path, hf_model):
    """No poking: model A (float32) is loaded and evicted; model B, loaded as float16 on the same pool, gets
    A's old weight pages as its KV blocks, whose unwritten rows read as fp16 hold NaN/Inf patterns."""
    big = write_checkpoint(str(tmp_path), "big", config_dict(DemoSpec("llama", 512, 1536, 4, 8, 8, vocab_size=256)))
    small = write_checkpoint(str(tmp_path), "small", config_dict(DemoSpec("llama", 64, 128, 2, 4, 2,
                                                                          vocab_size=TINY_VOCAB)))
    with PagePool(96 << 20, backend="host") as p:
        load_model(big, p).wait().close()
        lm = load_model(small, p, dtype="float16").wait()
        try:
            prompts = _prompts(lm.config.vocab_size, seed=1)
            got = _serve(lm, prompts)
        finally:
            lm.close()
    _assert_matches_transformers(hf_model(small), prompts, got, atol=2e-2)
