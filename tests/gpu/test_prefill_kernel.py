"""The tiled prefill attention kernel (kernels.prefill_attention, csrc/kernels) against the torch path of
engine/attention.py, on a real GPU (skipped without). Same steps, tolerances and helpers as test_kernels.py; a
file of its own, which bench/gpu.sh runs in a pytest process of its own after the others: were the kernel to
fault, the sticky CUDA error would not take the other files' results with it (it passed on an H200, 2026-11-28)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

from warmserve.memory import kernels  # noqa: E402

if torch.cuda.is_available() and not kernels.kernels_compiled():
    pytest.skip("this build has no CUDA kernels (nvcc was not found at build time)", allow_module_level=True)

from test_kernels import (DEV, TOL, _no_tf32, demo, engine_against_torch_path, make_step,  # noqa: E402,F401
                          run_torch)  # (the fixtures apply here too)


def check_prefill(s, chunks):
    """The tiled prefill kernel over every row of a step made of prefill chunks only (chunks: (start, n))."""
    dtype = s["q"].dtype
    rows, r = [], 0
    for _, n in chunks:
        rows.append((r, n))
        r += n
    cache = s["cache"].clone()
    kernels.write_kv(cache, s["k"], s["v"], s["meta"].write_rows, s["k_off"], s["v_off"])
    out_k = kernels.prefill_attention(
        s["q"], cache, s["block_tables"], s["row_seq"], s["row_len"], kernels.prefill_tiles(rows, DEV),
        k_off=s["k_off"], v_off=s["v_off"], rows_per_block=s["rows_per_block"], block_tokens=s["block_tokens"],
        scale=s["scale"], window=s["window"])
    out_t, cache_t = run_torch(s)
    torch.cuda.synchronize()
    assert torch.equal(cache, cache_t)
    torch.testing.assert_close(out_k, out_t, **TOL[dtype])
    if dtype != torch.float32:
        exact, _ = run_torch(s, torch.float32)
        torch.testing.assert_close(out_k.float(), exact, atol=1e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(8, 2, 64), (16, 4, 128), (4, 1, 96), (4, 2, 256), (2, 2, 32)])
def test_tiled_prefill_with_cached_context(dtype, heads, kv_heads, head_dim):
    """Chunks with cached context (crossing blocks, shorter and longer than a 16-row tile, one row), and a fresh
    chunk, which the tiled kernel computes as well (causal within the chunk)."""
    chunks = ((40, 25), (7, 1), (0, 12), (300, 37))
    check_prefill(make_step(dtype, chunks=chunks, heads=heads, kv_heads=kv_heads, head_dim=head_dim), chunks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_prefill_sliding_window_and_engine_blocks(dtype):
    chunks = ((30, 20), (0, 40), (5, 3))
    check_prefill(make_step(dtype, chunks=chunks, window=24), chunks)
    chunks = ((1000, 64), (255, 2))
    check_prefill(make_step(dtype, chunks=chunks, heads=8, kv_heads=2, head_dim=128, block_tokens=256, pad_rows=0),
                  chunks)


@pytest.mark.parametrize("name", ["llama-20m", "qwen2-30m"])
def test_engine_runs_chunks_with_cached_context_through_the_tiled_kernel(name, demo):
    """The engine's kernel path with Engine.cached_prefill = "tiled": chunked prefill's chunks through the tiled
    kernel, decodes beside them through paged_attention, against the torch path."""
    engine_against_torch_path(demo[name], "tiled")
