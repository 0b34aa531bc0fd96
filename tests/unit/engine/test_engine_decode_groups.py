"""Decode rows on the torch path attend in groups of like lengths, not all padded to the batch's longest (found in
review: one 7000-token decode made 31 short decodes gather and attend over 7000 keys each, the step 158x slower),
and a sliding-window model gathers its window, not its whole context. Counted in gathered K/V rows, not timed;
the tokens stay what transformers computes."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from warmserve.engine import Engine, SamplingParams, load_model

#: Short prompts decoding beside one long one (over two block boundaries).
LENGTHS = (3, 8, 8, 9, 20, 30, 40, 700)
#: Padding a group may carry whatever its real keys (attention.DECODE_PAD_SLACK_TOKENS).
SLACK = 256


def _prompts(vocab: int, lengths=LENGTHS, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


class _CacheGathers(TorchDispatchMode):
    """Rows read from the KV cache tensor by index_select (the torch path's gathers), per step."""

    def __init__(self, cache: torch.Tensor):
        super().__init__()
        self.storage = cache.untyped_storage().data_ptr()
        self.rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.index_select.default and args[0].untyped_storage().data_ptr() == self.storage:
            self.rows += args[2].numel()
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["tiny-bias", "tiny-mistral"])
def test_a_decode_step_gathers_about_the_keys_its_rows_attend_to(name, tiny_dir, pool):
    lm = load_model(tiny_dir[name], pool).wait()
    try:
        with Engine(lm) as eng:
            assert not eng.use_kernels
            params = SamplingParams(max_tokens=4, ignore_eos=True)
            for i, p in enumerate(_prompts(lm.config.vocab_size)):
                eng.add_request(str(i), p, params)
            eng.step()  # the prefills, all in one step
            seqs = list(eng.seqs.values())
            assert len(seqs) == len(LENGTHS) and all(s.num_computed == s.length - 1 for s in seqs)
            window = lm.config.sliding_window
            keys = sum(min(s.length, window) if window else s.length for s in seqs)
            mode = _CacheGathers(eng.kv.rows)
            with mode:
                eng.step()
            per_layer = mode.rows / (2 * lm.config.num_layers)  # K and V of each layer
            assert per_layer <= 2 * keys + SLACK, (
                f"a decode step of contexts {sorted(s.length for s in seqs)} gathered {per_layer:.0f} K rows a "
                f"layer for {keys} keys attended")
    finally:
        lm.close()


def _serve(lm, prompts, max_tokens=6):
    eng = Engine(lm)
    try:
        eng.record_logits = True
        for i, p in enumerate(prompts):
            eng.add_request(str(i), p, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
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


@pytest.mark.parametrize("name", ["tiny-bias", "tiny-mistral"])
def test_a_mixed_batch_decodes_what_transformers_computes(name, tiny_dir, pool, hf_model):
    lm = load_model(tiny_dir[name], pool).wait()
    try:
        prompts = _prompts(lm.config.vocab_size, LENGTHS + (1, 2, 24, 25, 260), seed=1)
        got = _serve(lm, prompts)
    finally:
        lm.close()
    ref = hf_model(tiny_dir[name])
    for i, p in enumerate(prompts):
        mine, out = got[str(i)]
        with torch.no_grad():
            want = ref(torch.tensor([p + out[:-1]])).logits[0, len(p) - 1:].float()
        torch.testing.assert_close(mine, want, atol=2e-4, rtol=1e-3, msg=lambda m: f"request {i} ({len(p)}): {m}")
        assert out == want.argmax(-1).tolist()


def test_decode_groups_cover_each_row_once_with_its_own_keys_and_bounded_padding():
    from warmserve.engine.attention import DECODE_PAD_SLACK_TOKENS, decode_batches

    assert DECODE_PAD_SLACK_TOKENS == SLACK
    T, rpb = 16, 4 * 16
    rnd = random.Random(0)
    for trial in range(200):
        window = rnd.choice([0, 0, 5, 40])
        lens = sorted((rnd.choice([1, 3, 17, 60, 300, 2000]) + rnd.randrange(20) for _ in range(rnd.randint(1, 12))),
                      key=lambda n: min(n, window) if window else n)
        blocks = [rnd.sample(range(1000), -(-n // T)) for n in lens]
        groups = decode_batches([(7 + i, n, b) for i, (n, b) in enumerate(zip(lens, blocks))], T, rpb, window, "cpu")
        row, gathered = 7, 0
        for g in groups:
            assert g.row == row
            S = g.rows.numel() // g.n
            rows = g.rows.view(g.n, S)
            for r in range(g.n):
                n, b = lens[row - 7 + r], blocks[row - 7 + r]
                keys = min(n, window) if window else n
                want = [b[p // T] * rpb + p % T for p in range(n - keys, n)]
                assert rows[r, :keys].tolist() == want
                # padding reads the row's own last key, masked out
                assert set(rows[r, keys:].tolist()) <= {want[-1]}
                if g.mask is None:
                    assert keys == S
                else:
                    assert g.mask[r, 0, 0].tolist() == [j < keys for j in range(S)]
            row += g.n
            gathered += g.rows.numel()
        assert row == 7 + len(lens)
        real = sum(min(n, window) if window else n for n in lens)
        assert gathered <= 2 * real + SLACK * len(groups), (trial, lens, window)
