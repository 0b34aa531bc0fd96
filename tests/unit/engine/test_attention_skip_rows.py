"""The torch path of attend() writes K/V as write_kv does: a negative write row (the kernels' "write nothing",
carried by a CUDA graph's padding rows and by warm_prefill) is skipped. Sent to index_copy_ it overwrote row
-1 + k_off, another layer's or block's row, on layers past 0, and raised IndexError on layer 0 (found in review)."""

import pytest
import torch

from warmserve.engine.attention import AttnMeta, PrefillChunk, attend

T, KVH, D, H = 4, 2, 32, 4
RPB = 2 * 2 * T  # two layers


def _step(write_rows, layer):
    g = torch.Generator().manual_seed(layer)
    n = len(write_rows)
    cache = torch.randn(3 * RPB, KVH * D, generator=g)
    q = torch.randn(n, H, D, generator=g)
    k = torch.randn(n, KVH, D, generator=g)
    v = torch.randn(n, KVH, D, generator=g)
    meta = AttnMeta(torch.tensor(write_rows), [PrefillChunk(0, n, 0)], None)
    return meta, q, k, v, cache


@pytest.mark.parametrize("layer", [0, 1])
def test_negative_write_rows_write_nothing(layer):
    k_off, v_off = 2 * layer * T, (2 * layer + 1) * T
    rows = [RPB + 0, -1, RPB + 2, -1]  # block 1, offsets 0 and 2; two padding rows
    meta, q, k, v, cache = _step(rows, layer)
    before = cache.clone()
    out = attend(meta, q, k, v, cache, k_off, v_off, D ** -0.5)
    want = before.clone()
    for i in (0, 2):  # the rows write_kv writes
        want[rows[i] + k_off] = k[i].reshape(-1)
        want[rows[i] + v_off] = v[i].reshape(-1)
    assert torch.equal(cache, want)
    assert out.shape == (4, H * D) and torch.isfinite(out).all()


def test_every_layer_of_a_step_skips_the_same_rows():
    """The kept rows are worked out once a step (on CUDA a device sync) and reused by every layer."""
    rows = [-1, RPB + 1]
    meta, q, k, v, cache = _step(rows, 0)
    before = cache.clone()
    for layer in (0, 1):
        attend(meta, q, k, v, cache, 2 * layer * T, (2 * layer + 1) * T, D ** -0.5)
    changed = (cache != before).any(1).nonzero().flatten().tolist()
    assert changed == [RPB + 1 + off for off in (0, T, 2 * T, 3 * T)]


def test_a_step_without_negative_rows_writes_every_row():
    rows = [RPB + 3, 2 * RPB]
    meta, q, k, v, cache = _step(rows, 1)
    attend(meta, q, k, v, cache, 2 * T, 3 * T, D ** -0.5)
    for i, r in enumerate(rows):
        assert torch.equal(cache[r + 2 * T], k[i].reshape(-1)) and torch.equal(cache[r + 3 * T], v[i].reshape(-1))
