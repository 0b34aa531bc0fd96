"""The sampler's work over the vocabulary does not grow with the rows it draws (found in review: row by row on the
CPU, with a full sort for top_p < 1, 32 rows at a 152k vocabulary took 110-520 ms a step). Counted in ops, not
timed."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from warmserve.engine.sampler import sample
from warmserve.protocol import SamplingParams


def _row(vocab: int, scale: float, seed: int) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * scale


class _VocabOps(TorchDispatchMode):
    """Counts the ops that read or write a tensor of vocabulary rows (its last dimension as long as the vocabulary;
    one or many rows)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.count = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = list(args) + list((kwargs or {}).values()) + [out]
        flat = [t for x in flat for t in (x if isinstance(x, (list, tuple)) else (x,))]
        if any(isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] >= self.vocab for t in flat):
            self.count += 1
        return out


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, top_k=50),
                                    SamplingParams(temperature=1.0, top_p=0.9),
                                    SamplingParams(temperature=1.0, top_p=0.5)])
def test_vocabulary_wide_work_does_not_grow_with_the_rows(params):
    """Not a timing: the number of ops over vocabulary-sized tensors is the same for 2 rows and for 16 (the
    per-row loop ran ~5 of them a row, a full sort among them for top_p)."""
    vocab = 4096

    def ops(n):
        logits = torch.stack([_row(vocab, 0.5, seed=i) for i in range(n)])  # flat: top_p 0.5 bins the rows
        logits[n // 2:, :4] += 12.0  # and half of them peaked
        mode = _VocabOps(vocab)
        with mode:
            sample(logits, [params] * n, [torch.Generator().manual_seed(i) for i in range(n)])
        return mode.count

    assert ops(16) == ops(2)
