"""The fused layer kernels (kernels.add_rms_norm, rope_qkv, rope_qkv_to_cache, silu_mul;
csrc/kernels/layer_kernels.cu) against the torch ops of engine/model.py they replace (rope_qkv_to_cache against
rope_qkv + write_kv), and engines with LoadedModel.fused_kernels or .rope_writes_kv (decode graphs included)
against ones without, on a real GPU (skipped without). Written without a GPU: bench/gpu.sh runs this file in a
pytest process of its own, so a fault here cannot take the other files' results with it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

import torch.nn.functional as F  # noqa: E402

from warmserve.engine.rope import apply_rope  # noqa: E402
from warmserve.memory import kernels  # noqa: E402

if torch.cuda.is_available() and not kernels.kernels_compiled():
    pytest.skip("this build has no CUDA kernels (nvcc was not found at build time)", allow_module_level=True)

from test_kernels import DEV, TOL, _no_tf32, demo, engines_agree  # noqa: E402,F401  (the fixtures apply here too)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _randn(*shape, dtype, seed):
    return torch.randn(*shape, generator=torch.Generator(DEV).manual_seed(seed), device=DEV).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 2048), (7, 4096), (33, 896), (3, 5120), (2, 1001), (2, 16384), (1, 20480)])
@pytest.mark.parametrize("with_res", [False, True])
def test_add_rms_norm_matches_the_torch_ops(dtype, rows, hidden, with_res):
    x = _randn(rows, hidden, dtype=dtype, seed=1)
    res = _randn(rows, hidden, dtype=dtype, seed=2) if with_res else None
    w = _randn(hidden, dtype=dtype, seed=3)
    out, h = kernels.add_rms_norm(x, w, 1e-5, res)
    h_t = x + res if with_res else x
    out_t = w * F.rms_norm(h_t.float(), (hidden,), eps=1e-5).to(dtype)
    torch.cuda.synchronize()
    assert torch.equal(h, h_t)  # one rounded add, as torch's
    torch.testing.assert_close(out, out_t, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_of_rows_not_16_byte_aligned_takes_the_element_loop(dtype):
    """Views one element into a buffer: the vector kernel needs 16-byte aligned rows, so the launch falls back to
    the one-element-at-a-time kernel, with the same results."""
    rows, hidden = 3, 2048
    buf = _randn(rows * hidden + 1, dtype=dtype, seed=7)
    rbuf = _randn(rows * hidden + 1, dtype=dtype, seed=8)
    x, res = buf[1:].view(rows, hidden), rbuf[1:].view(rows, hidden)
    assert x.data_ptr() % 16 and x.is_contiguous()
    w = _randn(hidden, dtype=dtype, seed=3)
    out, h = kernels.add_rms_norm(x, w, 1e-5, res)
    h_t = x + res
    torch.cuda.synchronize()
    assert torch.equal(h, h_t)
    torch.testing.assert_close(out, w * F.rms_norm(h_t.float(), (hidden,), eps=1e-5).to(dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(1, 5632), (16, 11008), (5, 4864)])
def test_silu_mul_matches_the_torch_ops(dtype, rows, inter):
    gu = _randn(rows, 2 * inter, dtype=dtype, seed=4) * 4
    g, u = gu.chunk(2, dim=-1)
    out = kernels.silu_mul(gu)
    torch.cuda.synchronize()
    torch.testing.assert_close(out, F.silu(g) * u, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(32, 8, 128), (14, 2, 64), (4, 4, 256), (2, 1, 32)])
@pytest.mark.parametrize("rows", [1, 19])
def test_rope_qkv_matches_the_torch_ops(dtype, heads, kv_heads, head_dim, rows):
    qkv = _randn(rows, (heads + 2 * kv_heads) * head_dim, dtype=dtype, seed=5)
    pos = torch.randint(0, 8192, (rows,), generator=torch.Generator(DEV).manual_seed(6), device=DEV)
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=DEV).float() / head_dim))
    freqs = pos.float()[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)
    q, k, v = kernels.rope_qkv(qkv, cos, sin, heads, kv_heads, head_dim)
    qt, kt, vt = qkv.view(rows, heads + 2 * kv_heads, head_dim).split([heads, kv_heads, kv_heads], dim=1)
    torch.cuda.synchronize()
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    assert torch.equal(v, vt)
    # each product and the sum rounded to the dtype, as apply_rope's three torch ops: equal, not merely close
    assert torch.equal(q, apply_rope(qt, cos, sin)) and torch.equal(k, apply_rope(kt, cos, sin))


@pytest.mark.parametrize("name", ["llama-20m", "qwen2-30m"])
def test_engine_with_fused_kernels_matches_the_unfused_engine(name, demo):
    engines_agree(demo[name], "fused_kernels")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(32, 8, 128), (14, 2, 64), (2, 1, 32)])
@pytest.mark.parametrize("rows", [1, 19])
def test_rope_qkv_to_cache_is_rope_qkv_then_write_kv(dtype, heads, kv_heads, head_dim, rows):
    qkv = _randn(rows, (heads + 2 * kv_heads) * head_dim, dtype=dtype, seed=7)
    cos, sin = _randn(rows, 1, head_dim, dtype=dtype, seed=8), _randn(rows, 1, head_dim, dtype=dtype, seed=9)
    n_cache, k_off, v_off = 4 * rows + 40, 5, 23  # a layer's K and V rows at offsets, as in a block
    write_rows = torch.randperm(n_cache - v_off, generator=torch.Generator(DEV).manual_seed(10), device=DEV)[:rows]
    write_rows[rows // 2] = -1  # a padding row: nothing written
    cache = _randn(n_cache, kv_heads * head_dim, dtype=dtype, seed=11)
    ref_cache = cache.clone()
    q = kernels.rope_qkv_to_cache(qkv, cos, sin, heads, kv_heads, head_dim, cache, write_rows, k_off, v_off)
    ref_q, k, v = kernels.rope_qkv(qkv, cos, sin, heads, kv_heads, head_dim)
    kernels.write_kv(ref_cache, k, v, write_rows, k_off, v_off)
    torch.cuda.synchronize()
    assert torch.equal(q, ref_q) and torch.equal(cache, ref_cache)


@pytest.mark.parametrize("name", ["llama-20m", "qwen2-30m"])
def test_engine_whose_rope_writes_kv_matches_the_engine_without(name, demo):
    engines_agree(demo[name], "rope_writes_kv", atol=0)  # the same values reach the cache
