"""The gemv kernel (kernels.gemv; csrc/kernels/gemv_kernels.cu) against F.linear, its staged forms (gemv_norm,
gemv_silu) against the kernels they take in, and engines with LoadedModel.gemv_kernel or .gemv_prologues (decode
graphs included) against ones without, on a real GPU (skipped without). Written without a GPU: bench/gpu.sh runs
this file in a pytest process of its own, so a fault here cannot take the other files' results with it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

import torch.nn.functional as F  # noqa: E402

from warmserve.errors import InvalidArgumentError  # noqa: E402
from warmserve.memory import kernels  # noqa: E402

if torch.cuda.is_available() and not kernels.kernels_compiled():
    pytest.skip("this build has no CUDA kernels (nvcc was not found at build time)", allow_module_level=True)

from test_kernels import DEV, _no_tf32, demo, engines_agree  # noqa: E402,F401  (the fixtures apply here too)

#: Against float64 on the same inputs: one rounding of the output to the dtype, plus float32 sums in another order.
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}


def _randn(*shape, dtype, seed, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator(DEV).manual_seed(seed), device=DEV) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("k,n", [(2048, 3072), (8192, 2048), (2048, 16384), (64, 24), (2048, 128256), (24, 7)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_float64(dtype, rows, k, n, bias):
    if (k * torch.empty((), dtype=dtype).element_size()) % 16:
        pytest.skip("rows of whole 16-byte vectors only")
    x = _randn(rows, k, dtype=dtype, seed=1)
    w = _randn(n, k, dtype=dtype, seed=2, scale=k ** -0.5)
    b = _randn(n, dtype=dtype, seed=3) if bias else None
    assert kernels.gemv_usable(x, w)
    y = kernels.gemv(x, w, b)
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    torch.cuda.synchronize()
    assert y.shape == (rows, n) and y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, **TOL[dtype])


def test_gemv_refuses_what_it_does_not_take():
    w = torch.zeros(8, 24, device=DEV, dtype=torch.bfloat16)
    assert not kernels.gemv_usable(torch.zeros(5, 24, device=DEV, dtype=torch.bfloat16), w)  # 5 rows
    assert not kernels.gemv_usable(torch.zeros(1, 20, device=DEV, dtype=torch.bfloat16), torch.zeros(
        8, 20, device=DEV, dtype=torch.bfloat16))  # 40-byte rows
    assert not kernels.gemv_usable(torch.zeros(1, 24, device=DEV), w)  # dtypes differ
    with pytest.raises(InvalidArgumentError, match="Fix: use F.linear"):
        kernels.gemv(torch.zeros(5, 24, device=DEV, dtype=torch.bfloat16), w)


@pytest.mark.parametrize("name", ["llama-20m", "qwen2-30m"])
def test_engine_with_gemv_matches_the_engine_without(name, demo):
    engines_agree(demo[name], "gemv_kernel", (3, 17, 64))  # three prompts: graph buckets of 1 to 4 rows take it


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("k,n", [(2048, 3072), (2048, 11264), (64, 24), (5632, 7)])
@pytest.mark.parametrize("with_res", [False, True])
def test_gemv_norm_matches_the_norm_then_gemv(dtype, rows, k, n, with_res):
    # (the norm's float32 sum in another order than add_rms_norm's: an ulp of its scale can flip a rounding)
    x = _randn(rows, k, dtype=dtype, seed=1)
    res = _randn(rows, k, dtype=dtype, seed=4) if with_res else None
    ln = _randn(k, dtype=dtype, seed=5, scale=0.1) + 1
    w = _randn(n, k, dtype=dtype, seed=2, scale=k ** -0.5)
    b = _randn(n, dtype=dtype, seed=3)
    if rows * k * x.element_size() > kernels._C.KERNEL_GEMV_STAGED_MAX_BYTES:
        assert not kernels.gemv_staged_usable(x, w)
        with pytest.raises(InvalidArgumentError, match="Fix: run the norm"):
            kernels.gemv_norm(x, ln, 1e-5, w, b, res)
        return
    assert kernels.gemv_staged_usable(x, w)
    y, h = kernels.gemv_norm(x, ln, 1e-5, w, b, res)
    normed, ref_h = kernels.add_rms_norm(x, ln, 1e-5, res)
    ref = kernels.gemv(normed, w, b)
    torch.cuda.synchronize()
    assert torch.equal(h, ref_h) and (with_res or h is x)
    torch.testing.assert_close(y, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize("k,n", [(5632, 2048), (1024, 4096), (64, 24)])
def test_gemv_silu_is_silu_mul_then_gemv_bit_for_bit(dtype, rows, k, n):
    gu = _randn(rows, 2 * k, dtype=dtype, seed=6, scale=3)
    w = _randn(n, k, dtype=dtype, seed=7, scale=k ** -0.5)
    if rows * k * gu.element_size() > kernels._C.KERNEL_GEMV_STAGED_MAX_BYTES:
        assert not kernels.gemv_staged_usable(gu, w)
        return
    y = kernels.gemv_silu(gu, w)
    ref = kernels.gemv(kernels.silu_mul(gu), w)
    torch.cuda.synchronize()
    assert torch.equal(y, ref)  # the same roundings and the same sums in the same order


def test_the_staged_gemvs_refuse_what_they_do_not_take():
    w = torch.zeros(8, 32, device=DEV, dtype=torch.bfloat16)
    ln = torch.ones(32, device=DEV, dtype=torch.bfloat16)
    assert not kernels.gemv_staged_usable(torch.zeros(5, 32, device=DEV, dtype=torch.bfloat16), w)  # 5 rows
    assert not kernels.gemv_staged_usable(torch.zeros(1, 48, device=DEV, dtype=torch.bfloat16), w)  # neither k nor 2k
    with pytest.raises(InvalidArgumentError, match="Fix: run the norm or silu_mul"):
        kernels.gemv_silu(torch.zeros(1, 32, device=DEV, dtype=torch.bfloat16), w)  # gu must be [M, 2k]
    with pytest.raises(InvalidArgumentError, match="norm_w"):
        kernels.gemv_norm(torch.zeros(1, 32, device=DEV, dtype=torch.bfloat16), ln[:16], 1e-5, w)


@pytest.mark.parametrize("name", ["llama-20m", "qwen2-30m"])
def test_engine_with_gemv_prologues_matches_the_engine_without(name, demo):
    engines_agree(demo[name], "gemv_prologues", (3, 17, 64))  # buckets of 1 to 4 rows take the staged kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("k,n", [(2048, 3072), (5632, 2048), (64, 24), (8192, 7)])
def test_eight_vectors_in_flight_give_the_sums_of_four_bit_for_bit(dtype, rows, k, n):
    # each lane still adds its vectors in ascending order: only how many loads wait together changes
    x = _randn(rows, k, dtype=dtype, seed=1)
    w = _randn(n, k, dtype=dtype, seed=2, scale=k ** -0.5)
    gu = _randn(rows, 2 * k, dtype=dtype, seed=3)
    ln = _randn(k, dtype=dtype, seed=4, scale=0.1) + 1
    staged = kernels.gemv_staged_usable(gu, w)
    out = {}
    for n_flight in (4, 8):
        old = kernels.set_gemv_in_flight(n_flight)
        try:
            out[n_flight] = [kernels.gemv(x, w)] + ([kernels.gemv_silu(gu, w), kernels.gemv_norm(x, ln, 1e-5, w)[0]]
                                                    if staged else [])
        finally:
            kernels.set_gemv_in_flight(old)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(out[4], out[8]))
