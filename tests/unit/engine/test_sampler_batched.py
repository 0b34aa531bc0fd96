"""The sampler draws all of a step's sampled rows together (found in review: row by row on the CPU, with a full sort
for top_p < 1, 32 rows at a 152k vocabulary took 110-520 ms a step). Each row inverts its filtered CDF at one
uniform number: checked here on a grid of numbers against filter_logits, the definition of what a row keeps, on
each route (no filter, top_k, a nucleus within the candidates, one wider than them)."""

from __future__ import annotations

import pytest
import torch

from warmserve.engine.sampler import TOP_P_CANDIDATES, draw, filter_logits, sample
from warmserve.protocol import SamplingParams

#: Grid points per row: each token's count may differ from GRID * p by one point, plus float32 rounding.
GRID = 8192


def _row(vocab: int, scale: float, seed: int) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * scale


def _want(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    return filter_logits(row / p.temperature, p.top_k, p.top_p).softmax(-1)


def _grid_counts(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    counts = torch.zeros(row.shape[0])
    u = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID
    for part in u.split(512):
        tokens, ok = draw(row.expand(len(part), -1), [p] * len(part), part.float())
        assert ok.all()
        counts += torch.bincount(tokens, minlength=row.shape[0])
    return counts


@pytest.mark.parametrize("vocab,scale,params", [
    (512, 2.0, SamplingParams(temperature=0.7)),
    (512, 2.0, SamplingParams(temperature=1.3, top_k=40)),
    (512, 3.0, SamplingParams(temperature=1.0, top_p=0.8)),
    (512, 3.0, SamplingParams(temperature=1.0, top_k=30, top_p=0.6)),
    # a flat row: its nucleus (about 1,700 tokens) is wider than the candidates, so it is found by binning
    (4096, 0.5, SamplingParams(temperature=1.0, top_p=0.5)),
])
def test_each_route_draws_the_filtered_distribution(vocab, scale, params):
    row = _row(vocab, scale, seed=vocab)
    want = _want(row, params)
    if params.top_p < 1 and params.top_k == 0 and scale == 0.5:
        assert int((want > 0).sum()) > TOP_P_CANDIDATES
    got = _grid_counts(row, params)
    assert set(got.nonzero().squeeze(1).tolist()) <= set(want.nonzero().squeeze(1).tolist())
    worst = (got - GRID * want).abs().max().item()
    assert worst <= 1.5, f"a token's count is off by {worst} grid points from GRID * p"


def test_a_rows_token_is_its_own_whatever_its_batch():
    """Rows of every route in one batch draw what each draws alone from the same generator state."""
    vocab = 4096
    rows = [_row(vocab, s, seed=i) for i, s in enumerate((2.0, 2.0, 3.0, 0.5, 2.0, 3.0))]
    rows[5][:8] += 12.0  # peaked: its nucleus lies within the candidates
    params = [SamplingParams(temperature=0.9, seed=1), SamplingParams(temperature=1.0, top_k=20, seed=2),
              SamplingParams(), SamplingParams(temperature=1.0, top_p=0.5, seed=4),
              SamplingParams(temperature=1.0, top_k=2000, top_p=0.95, seed=5),
              SamplingParams(temperature=1.0, top_p=0.9, seed=6)]
    for step in range(20):
        gens = [torch.Generator().manual_seed(1000 * step + i) for i in range(len(rows))]
        batch = sample(torch.stack(rows), params, gens)
        for i, (row, p) in enumerate(zip(rows, params)):
            alone = sample(row[None], [p], [torch.Generator().manual_seed(1000 * step + i)])
            assert batch[i] == alone[0], f"row {i} at step {step}"
