"""The attention wrapper's bound on the block tables and the torch path's parity with write_kv on negative rows,
on a real GPU (skipped without). Not run on a GPU yet: written 2026-11-30 on a CPU machine (the CPU halves are
tests/unit/memory/test_kernel_arg_checks.py and tests/unit/engine/test_attention_skip_rows.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

from warmserve.engine.attention import AttnMeta, PrefillChunk, attend  # noqa: E402
from warmserve.errors import InvalidArgumentError  # noqa: E402
from warmserve.memory import kernels  # noqa: E402

if torch.cuda.is_available() and not kernels.kernels_compiled():
    pytest.skip("this build has no CUDA kernels (nvcc was not found at build time)", allow_module_level=True)

T, KVH, D, H = 16, 2, 64, 8
RPB = 2 * T


def test_a_row_longer_than_its_block_table_is_refused_when_max_len_is_derived():
    """row_len 40 over a table of 2 blocks of 16: the kernel would read table entries past the row. With max_len
    left to the wrapper it is the longest row, so the check costs nothing."""
    cache = torch.zeros(4 * RPB, KVH * D, device="cuda")
    q = torch.zeros(1, H, D, device="cuda")
    bt = torch.tensor([[0, 1]], dtype=torch.int32, device="cuda")
    seq = torch.zeros(1, dtype=torch.int32, device="cuda")
    geometry = dict(k_off=0, v_off=T, rows_per_block=RPB, block_tokens=T, scale=D ** -0.5)
    with pytest.raises(InvalidArgumentError, match="a row sees 40 keys but block tables of 2 blocks of 16 tokens "
                                                   "hold 32. Fix: widen block_tables to 3 blocks"):
        kernels.paged_attention(q, cache, bt, seq, torch.tensor([40], dtype=torch.int32, device="cuda"), **geometry)
    ok = kernels.paged_attention(q, cache, bt, seq, torch.tensor([32], dtype=torch.int32, device="cuda"), **geometry)
    torch.cuda.synchronize()
    assert ok.shape == q.shape


@pytest.mark.parametrize("layer", [0, 1])
def test_torch_path_and_write_kv_skip_the_same_negative_rows(layer):
    g = torch.Generator().manual_seed(layer)
    k_off, v_off = 2 * layer * T, (2 * layer + 1) * T
    rows = torch.tensor([4 * RPB + 3, -1, 4 * RPB + 5, -1], device="cuda")  # -1: a padding row
    cache = torch.randn(8 * RPB, KVH * D, generator=g).cuda()
    q = torch.randn(4, H, D, generator=g).cuda()
    k = torch.randn(4, KVH, D, generator=g).cuda()
    v = torch.randn(4, KVH, D, generator=g).cuda()
    by_kernel = cache.clone()
    kernels.write_kv(by_kernel, k, v, rows, k_off, v_off)
    by_torch = cache.clone()
    attend(AttnMeta(rows, [PrefillChunk(0, 4, 0)], None), q, k, v, by_torch, k_off, v_off, D ** -0.5)
    torch.cuda.synchronize()
    assert torch.equal(by_torch, by_kernel) and not torch.equal(by_torch, cache)
