"""Arguments the attention and K/V kernels would misuse on the device (a wrong-size kernel, a division by zero, a
read past a block or a row) are refused with InvalidArgumentError before any launch, so on this machine too: the
raw bindings' checks run on the host (csrc/kernels), the wrappers' (memory/kernels.py) before any CUDA call."""

import pytest
import torch

from warmserve import _C
from warmserve.errors import InvalidArgumentError
from warmserve.memory import kernels

compiled = pytest.mark.skipif(not _C.kernels_compiled(), reason="a stub build refuses every call as unavailable")


def _raw_prefill(head_dim=64, heads=8, kv_heads=2, block_tokens=16, dtype=2):
    # Null pointers and one tile: nothing is dereferenced on the host, and a call that passed the checks would
    # reach the launch (a DriverError without a GPU).
    _C.kernel_prefill_attention(0, 0, 0, 0, 1, 0, 0, 0, 1, heads, kv_heads, head_dim, 64, block_tokens, 0, 16, 0,
                                1.0, dtype, 0)


@compiled
@pytest.mark.parametrize("kw,match", [
    (dict(head_dim=80), "head_dim must be a multiple of 32 in \\[32, 256\\], got 80. Fix:"),  # ran the 64 kernel
    (dict(head_dim=100), "head_dim must be a multiple of 32 in \\[32, 256\\], got 100. Fix:"),  # the 96 kernel
    (dict(heads=12, kv_heads=8), "12 query heads are no multiple of 8 KV heads. Fix:"),  # read past the row
    (dict(kv_heads=0), "8 query heads are no multiple of 0 KV heads. Fix:"),  # divided by zero on the device
    (dict(block_tokens=0), "block_tokens must be >= 1, got 0. Fix:"),  # t / block_tokens on the device
    (dict(dtype=7), "unknown dtype code 7. Fix:")])
def test_raw_prefill_binding_refuses_what_paged_attention_refuses(kw, match):
    with pytest.raises(InvalidArgumentError, match="prefill_attention: " + match):
        _raw_prefill(**kw)


@compiled
def test_raw_paged_binding_refuses_block_tokens_zero():
    with pytest.raises(InvalidArgumentError, match="paged_attention: block_tokens must be >= 1, got 0. Fix:"):
        _C.kernel_paged_attention(0, 0, 0, 0, 1, 0, 0, 1, 8, 2, 64, 64, 0, 0, 16, 0, 1.0, 256, 1, 0, 2, 0, False, 0)


@compiled
def test_raw_write_kv_refuses_an_unknown_dtype_code():
    """An unknown code was copied as 2-byte elements: a row of the wrong length, no error."""
    with pytest.raises(InvalidArgumentError, match="write_kv: unknown dtype code 7. Fix:"):
        _C.kernel_write_kv(0, 0, 0, 0, 1, 128, 0, 16, 7, 0)


_GOOD = dict(k_off=16, v_off=32, rows_per_block=48, block_tokens=16, scale=0.125)


def _wrappers(**geometry):
    """paged_attention and prefill_attention on CPU tensors of a valid shape with the given block geometry."""
    cache = torch.zeros(96, 128)
    q = torch.zeros(2, 4, 64)
    bt = torch.zeros(1, 2, dtype=torch.int32)
    seq = torch.zeros(2, dtype=torch.int32)
    lens = torch.tensor([1, 2], dtype=torch.int32)
    kw = {**_GOOD, **geometry}
    return [lambda: kernels.paged_attention(q, cache, bt, seq, lens, max_len=2, **kw),
            lambda: kernels.prefill_attention(q, cache, bt, seq, lens, kernels.prefill_tiles([(0, 2)], "cpu"), **kw)]


@pytest.mark.parametrize("geometry,match", [
    (dict(block_tokens=0), "block_tokens must be >= 1, got 0"),
    (dict(v_off=40), "v_off 40 \\+ block_tokens 16 must lie in a block of 48 rows"),  # read the next block's rows
    (dict(rows_per_block=40), "v_off 32 \\+ block_tokens 16 must lie in a block of 40 rows"),
    (dict(k_off=-16), "k_off -16 \\+ block_tokens 16"),  # read the previous block's rows
    (dict(k_off=40), "k_off 40 \\+ block_tokens 16")])
def test_wrappers_refuse_offsets_outside_a_block_before_any_cuda_call(geometry, match):
    for call in _wrappers(**geometry):
        with pytest.raises(InvalidArgumentError, match=match) as ei:
            call()
        assert "Fix:" in str(ei.value)


def test_a_valid_geometry_passes_the_checks():
    """The checks refuse only misuse: the offsets of a block's last layer still reach the backend (and, without
    kernels or a GPU, its BackendUnavailableError)."""
    from warmserve.errors import BackendUnavailableError

    expected = InvalidArgumentError if torch.cuda.is_available() else BackendUnavailableError  # CPU tensors
    for call in _wrappers(k_off=0, v_off=32):
        with pytest.raises(expected) as ei:
            call()
        assert "must lie in a block" not in str(ei.value) and "block_tokens must be" not in str(ei.value)
