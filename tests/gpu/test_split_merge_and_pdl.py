"""Two launch-saving paths of the decode step on a real GPU (skipped without), written before a GPU was at hand:

- paged_attention's splits merging themselves (merge_in_kernel, off by default until this has run: a row's one
  used split writes its output, else the last split to finish merges the row's; no reduce kernel) against the
  reduce kernel and the torch path, with the counters left zero after every call, eagerly and replayed from a CUDA
  graph;
- programmatic dependent launch (kernels.set_programmatic_launch, Hopper and newer): the same kernels in the same
  order, so the same bits, eagerly and through an engine's decode graphs.

bench/gpu.sh runs this file in a pytest process of its own, so a fault here cannot take the other files' results.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

from warmserve.errors import InvalidArgumentError  # noqa: E402
from warmserve.memory import kernels  # noqa: E402

if torch.cuda.is_available() and not kernels.kernels_compiled():
    pytest.skip("this build has no CUDA kernels (nvcc was not found at build time)", allow_module_level=True)

from test_kernels import DEV, TOL, check, engine_run, make_step, run_torch  # noqa: E402
from test_kernels import _no_tf32, demo  # noqa: E402,F401  (the fixtures apply here too)


def _attend(s, **kw):
    return kernels.paged_attention(
        s["q"], s["cache"], s["block_tables"], s["row_seq"], s["row_len"], k_off=s["k_off"], v_off=s["v_off"],
        rows_per_block=s["rows_per_block"], block_tokens=s["block_tokens"], scale=s["scale"], window=s["window"],
        max_len=s["max_len"], **kw)


def _filled(s):
    """The step with its K/V written into its cache (as the attention of the step reads it)."""
    s = dict(s, cache=s["cache"].clone())
    kernels.write_kv(s["cache"], s["k"], s["v"], s["meta"].write_rows, s["k_off"], s["v_off"])
    return s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gqa_shared", [False, True])
@pytest.mark.parametrize("window", [0, 40])
@pytest.mark.parametrize("split_tokens", [32, 256])
def test_splits_merged_in_the_kernel_equal_the_reduce_kernel(dtype, gqa_shared, window, split_tokens):
    """Rows of one used split (written directly), of several (merged by the last), rows past a window, under a
    split count fixed far past them (as a graph fixes it); the counters are zero after each call, and twenty
    calls in a row on one counter buffer give the first call's answer."""
    s = _filled(make_step(dtype, decode_lens=(1, 20, 31, 32, 33, 100, 300, 700), chunks=((60, 9),), heads=8,
                          kv_heads=2, head_dim=64, block_tokens=16, window=window))
    s["max_len"] = 4096
    reduce = _attend(s, split_tokens=split_tokens, gqa_shared=gqa_shared, merge_in_kernel=False)
    counters = torch.zeros(s["q"].shape[0] * s["q"].shape[1] + 5, dtype=torch.int32, device=DEV)
    merged = _attend(s, split_tokens=split_tokens, gqa_shared=gqa_shared, split_counters=counters,
                     merge_in_kernel=True)
    torch.cuda.synchronize()
    assert int(counters.abs().sum()) == 0
    torch.testing.assert_close(merged, reduce, atol=1e-6 if dtype == torch.float32 else 8e-3, rtol=1e-5)
    exact, _ = run_torch(s, torch.float32)
    torch.testing.assert_close(merged.float(), exact, **TOL[dtype])
    for _ in range(20):
        again = _attend(s, split_tokens=split_tokens, gqa_shared=gqa_shared, split_counters=counters,
                        merge_in_kernel=True)
    torch.cuda.synchronize()
    assert torch.equal(again, merged) and int(counters.abs().sum()) == 0


@pytest.mark.parametrize("merge_in_kernel", [False, True])
def test_both_merges_against_the_torch_path(merge_in_kernel):
    """Long-context shapes of the other kernel tests (which take the default), through each merge as the default."""
    old = kernels.set_merge_in_kernel(merge_in_kernel)
    try:
        s = make_step(torch.bfloat16, decode_lens=(3000, 7, 513), heads=8, kv_heads=2, head_dim=128,
                      block_tokens=256, pad_rows=0)
        s["max_len"] = 65536
        check(s, split_tokens=kernels.default_split_tokens(3, 8, 65536))
        check(s, split_tokens=256, gqa_shared=True)
    finally:
        kernels.set_merge_in_kernel(old)


def test_in_kernel_merge_replays_from_a_graph_as_rows_grow():
    """One graph captured over a fixed split and its own counters, replayed while the rows' lengths change (one
    used split, then several): equal to eager each time, counters zero after."""
    s = _filled(make_step(torch.float32, decode_lens=(700, 20, 256), head_dim=64, block_tokens=256, pad_rows=0))
    s["max_len"] = 8192
    counters = torch.zeros(64, dtype=torch.int32, device=DEV)
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        _attend(s, split_tokens=256, split_counters=counters, merge_in_kernel=True)
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _attend(s, split_tokens=256, split_counters=counters, merge_in_kernel=True)
    for lens in ((700, 20, 256), (1, 255, 257), (768, 512, 3)):
        s["row_len"].copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        eager = _attend(s, split_tokens=256, merge_in_kernel=False)
        torch.cuda.synchronize()
        torch.testing.assert_close(static_out, eager, atol=1e-6, rtol=1e-5)
        assert int(counters.abs().sum()) == 0


def test_split_counters_of_the_wrong_kind_are_refused():
    s = _filled(make_step(torch.float32, decode_lens=(700, 20), head_dim=64, block_tokens=256, pad_rows=0))
    for bad in (torch.zeros(3, dtype=torch.int32, device=DEV), torch.zeros(64, dtype=torch.int64, device=DEV)):
        with pytest.raises(InvalidArgumentError, match="split_counters"):
            _attend(s, split_tokens=256, split_counters=bad, merge_in_kernel=True)


hopper = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                            reason="programmatic dependent launch needs compute capability 9.0")


@pytest.fixture
def pdl_off_after():
    yield
    kernels.set_programmatic_launch(False)


@hopper
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_programmatic_launch_gives_the_same_bits_eagerly(dtype, pdl_off_after):
    """write_kv, paged_attention (both merges), the fused layer kernels and gemv back to back with PDL on equal the
    same calls with it off, bit for bit (same kernels, same order of operations)."""
    def run():
        s = _filled(make_step(dtype, decode_lens=(5, 300, 1000), chunks=((0, 9),), heads=8, kv_heads=2, head_dim=64,
                              block_tokens=16))
        s["max_len"] = 2048
        a = _attend(s, split_tokens=64, merge_in_kernel=True)
        b = _attend(s, split_tokens=64, merge_in_kernel=False)
        g = torch.Generator(DEV).manual_seed(3)
        x = torch.randn(3, 2048, generator=g, device=DEV).to(dtype)
        w = (torch.randn(4096, 2048, generator=g, device=DEV) * 0.02).to(dtype)
        normed, _ = kernels.add_rms_norm(x, torch.ones(2048, device=DEV, dtype=dtype), 1e-5, res=x * 0.5)
        y = kernels.silu_mul(kernels.gemv(normed, w))
        torch.cuda.synchronize()
        return a, b, y

    assert kernels.set_programmatic_launch(False) is False
    off = run()
    assert kernels.set_programmatic_launch(True) is False and kernels.programmatic_launch()
    on = run()
    for x, y in zip(off, on):
        assert torch.equal(x, y)


@hopper
def test_programmatic_launch_through_the_decode_graphs(demo, pdl_off_after):  # noqa: F811
    """An engine whose decode graphs were captured with PDL on gives the tokens and logits of one captured with it
    off (graphs replayed in both)."""
    kernels.set_programmatic_launch(False)
    off = engine_run(demo["llama-20m"])
    kernels.set_programmatic_launch(True)
    on = engine_run(demo["llama-20m"])
    assert off[2] > 0 and on[2] > 0  # decode steps replayed graphs
    assert on[0] == off[0]
    for a, b in zip(on[1], off[1]):
        assert torch.equal(a, b)
