"""The CUDA kernels (csrc/kernels) against the torch path of engine/attention.py, on a real GPU (skipped without).

Each case builds one engine step over a random paged cache (prefill chunks first, then decode rows, as
engine._run lays them out), runs attend() on one copy of the cache and write_kv + paged_attention on another,
and compares the caches (bit-exact: both only copy) and the outputs. Tolerances: float32 atol = rtol = 1e-4
(TF32 off; the kernel sums in another order); bfloat16 atol = rtol = 2e-2 against attend() on the same bf16
data (both round q.k and p.v differently), and atol 1e-2 against attend() in float32 on the upcast data (the
kernel accumulates in float32 and rounds only its output, so it must be that close to exact).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

from warmserve.engine.attention import AttnMeta, DecodeBatch, PrefillChunk, attend, causal_mask  # noqa: E402
from warmserve.memory import kernels  # noqa: E402
from warmserve.errors import InvalidArgumentError  # noqa: E402

if torch.cuda.is_available() and not kernels.kernels_compiled():
    pytest.skip("this build has no CUDA kernels (nvcc was not found at build time)", allow_module_level=True)

DEV = "cuda"
# float16 keeps 3 more mantissa bits than bfloat16 (10 against 7): its bound is 8x tighter.
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2.5e-3, rtol=2.5e-3)}


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def engine_run(path, lens=(3, 17, 64, 261), **settings):
    """(tokens, logits, graph steps) of an engine over ``path`` on a cuda pool with LoadedModel attributes
    ``settings`` (e.g. fused_kernels=False), whose decode steps replay graphs captured with them: greedy, 6 new
    tokens for prompts of ``lens`` tokens."""
    from warmserve.engine import Engine, SamplingParams, load_model
    from warmserve.memory import PagePool

    with PagePool(1 << 30, backend="cuda") as pool:
        lm = load_model(path, pool).wait()
        for name, value in settings.items():
            setattr(lm, name, value)
        eng = Engine(lm, max_batch_tokens=48)
        assert eng.graphs is not None
        model_names = {"fused_kernels": "fused_kernels", "gemv_kernel": "gemv",  # LoadedModel -> Model attribute
                       "gemv_prologues": "gemv_prologues", "rope_writes_kv": "rope_writes_kv"}
        assert all(getattr(eng.model, model_names[k]) == v for k, v in settings.items())
        prompts = [torch.randint(0, lm.config.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
                   for n in lens]
        toks, logits = eng.generate_with_logits(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
        graph_steps = eng.num_graph_steps
        eng.close()
        lm.close()
    return toks, logits, graph_steps


def engines_agree(path, setting: str, lens=(3, 17, 64, 261), atol: float = 1e-3) -> None:
    """engine_run with the LoadedModel attribute ``setting`` on and off: graphs replayed, the same greedy tokens,
    logits within atol (relative the same)."""
    toks, logits, graph_steps = engine_run(path, lens, **{setting: True})
    ref_toks, ref_logits, _ = engine_run(path, lens, **{setting: False})
    assert graph_steps > 0
    assert toks == ref_toks
    for mine, ref in zip(logits, ref_logits):
        torch.testing.assert_close(mine, ref, atol=atol, rtol=atol)


def make_step(dtype, *, decode_lens=(), chunks=(), layers=2, kv_heads=2, heads=8, head_dim=64, block_tokens=16,
              pad_rows=3, window=0, layer=1, seed=0):
    """A random step. decode_lens: context length of each decode sequence (its new token included); chunks:
    (start, n) of each prefill chunk. Returns a dict with the torch metadata and the kernels' arguments."""
    g = torch.Generator().manual_seed(seed)
    T = block_tokens
    rpb = 2 * layers * T + pad_rows  # padding rows: rows_per_block need not be 2 * layers * T
    seq_lens = [s + n for s, n in chunks] + list(decode_lens)
    need = [math.ceil(n / T) for n in seq_lens]
    n_blocks = sum(need) + 3
    perm = torch.randperm(n_blocks, generator=g).tolist()
    tables, at = [], 0
    for k in need:
        tables.append(perm[at:at + k])
        at += k
    row_elems = kv_heads * head_dim
    cache = torch.randn(n_blocks * rpb, row_elems, generator=g).to(DEV, dtype)
    n_rows = sum(n for _, n in chunks) + len(decode_lens)
    q = torch.randn(n_rows, heads, head_dim, generator=g).to(DEV, dtype)
    k = torch.randn(n_rows, kv_heads, head_dim, generator=g).to(DEV, dtype)
    v = torch.randn(n_rows, kv_heads, head_dim, generator=g).to(DEV, dtype)

    def row_of(blocks, p):
        return blocks[p // T] * rpb + p % T

    wrows, prefills, row = [], [], 0
    row_seq, row_len = [], []
    for i, (start, n) in enumerate(chunks):
        wrows += [row_of(tables[i], p) for p in range(start, start + n)]
        if start == 0 and (not window or n <= window):
            prefills.append(PrefillChunk(row, n, 0))
        else:
            ctx = torch.arange(start + n)
            t = torch.tensor(tables[i])
            prefills.append(PrefillChunk(row, n, start, (t[ctx // T] * rpb + ctx % T).to(DEV),
                                         causal_mask(n, start, window, "cpu").to(DEV)))
        row_seq += [i] * n
        row_len += range(start + 1, start + n + 1)
        row += n
    decode = None
    if decode_lens:
        dec_tables = tables[len(chunks):]
        lens = torch.tensor(decode_lens)
        S = int(lens.max())
        nb = math.ceil(S / T)
        padded = torch.tensor([b[:nb] + [b[0]] * (nb - len(b[:nb])) for b in dec_tables])
        ar = torch.arange(S)
        mask = ar[None, :] < lens[:, None]
        if window:
            mask &= ar[None, :] > (lens[:, None] - 1 - window)
        decode = DecodeBatch(row, (padded[:, ar // T] * rpb + ar % T).view(-1).to(DEV), mask[:, None, None, :].to(DEV))
        for j, n in enumerate(decode_lens):
            wrows.append(row_of(dec_tables[j], n - 1))
            row_seq.append(len(chunks) + j)
            row_len.append(n)
    width = max(need)
    bt = torch.tensor([b + [b[0]] * (width - len(b)) for b in tables], dtype=torch.int32, device=DEV)
    return dict(
        meta=AttnMeta(torch.tensor(wrows, device=DEV), prefills, decode), q=q, k=k, v=v, cache=cache,
        k_off=2 * layer * T, v_off=(2 * layer + 1) * T, scale=head_dim ** -0.5, window=window,
        block_tables=bt, row_seq=torch.tensor(row_seq, dtype=torch.int32, device=DEV),
        row_len=torch.tensor(row_len, dtype=torch.int32, device=DEV), rows_per_block=rpb, block_tokens=T,
        max_len=max(seq_lens))


def run_torch(s, dtype=None):
    cast = (lambda t: t.to(dtype)) if dtype else (lambda t: t)
    cache = cast(s["cache"]).clone()
    out = attend(s["meta"], cast(s["q"]), cast(s["k"]), cast(s["v"]), cache, s["k_off"], s["v_off"], s["scale"])
    return out.view_as(s["q"]), cache


def run_kernels(s, cache=None, split_tokens=None, gqa_shared=False, warps=None):
    cache = s["cache"].clone() if cache is None else cache
    kernels.write_kv(cache, s["k"], s["v"], s["meta"].write_rows, s["k_off"], s["v_off"])
    out = kernels.paged_attention(
        s["q"], cache, s["block_tables"], s["row_seq"], s["row_len"], k_off=s["k_off"], v_off=s["v_off"],
        rows_per_block=s["rows_per_block"], block_tokens=s["block_tokens"], scale=s["scale"], window=s["window"],
        max_len=s["max_len"], split_tokens=split_tokens, gqa_shared=gqa_shared, warps=warps)
    return out, cache


def check(s, split_tokens=None, gqa_shared=False, warps=None):
    dtype = s["q"].dtype
    out_k, cache_k = run_kernels(s, split_tokens=split_tokens, gqa_shared=gqa_shared, warps=warps)
    out_t, cache_t = run_torch(s)
    torch.cuda.synchronize()
    assert torch.equal(cache_k, cache_t)  # write_kv wrote exactly the rows attend() wrote
    torch.testing.assert_close(out_k, out_t, **TOL[dtype])
    if dtype != torch.float32:
        exact, _ = run_torch(s, torch.float32)
        torch.testing.assert_close(out_k.float(), exact, atol=1e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_matches_index_copy(dtype):
    s = make_step(dtype, decode_lens=(5, 40, 17), chunks=((0, 9),))
    _, cache_k = run_kernels(s)
    _, cache_t = run_torch(s)
    assert torch.equal(cache_k, cache_t)
    assert not torch.equal(cache_k, s["cache"])  # the step did write


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(8, 8, 64), (8, 2, 64), (16, 4, 128), (4, 1, 96), (4, 2, 256),
                                                     (2, 2, 32)])
def test_decode_attention_gqa(dtype, heads, kv_heads, head_dim):
    check(make_step(dtype, decode_lens=(1, 2, 16, 17, 33, 100), heads=heads, kv_heads=kv_heads, head_dim=head_dim))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split_tokens", [None, 256, 1000])
def test_decode_long_context_split(dtype, split_tokens):
    """Engine-sized blocks (256 tokens), one long sequence beside short ones: several splits, some past the
    short sequences' ends."""
    s = make_step(dtype, decode_lens=(3000, 7, 513), heads=8, kv_heads=2, head_dim=128, block_tokens=256,
                  pad_rows=0)
    if split_tokens is None:
        assert math.ceil(3000 / kernels.default_split_tokens(3, 8, 3000)) > 1
    check(s, split_tokens=split_tokens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_style_fixed_split_over_a_far_longer_max_len(dtype):
    """As a CUDA graph calls it (engine/graphs.py): max_len and the split fixed for the longest context the slot
    allows, far beyond these sequences, so most splits are empty and take the early exit."""
    s = make_step(dtype, decode_lens=(3, 300, 41), heads=8, kv_heads=2, head_dim=64, block_tokens=256, pad_rows=0)
    s["max_len"] = 65536
    check(s, split_tokens=kernels.default_split_tokens(3, 8, 65536))
    check(s, split_tokens=256)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [0, 32, 64, 70])
@pytest.mark.parametrize("gqa_shared", [False, True])
def test_the_reduce_reads_the_used_splits_alone(dtype, window, gqa_shared):
    """reduce_splits_kernel merges only the splits a row's keys fall in (used_splits): rows ending just before, on
    and just past a split boundary, windows starting on one and inside one, rows shorter than the window, under a
    split count fixed far past them (as a CUDA graph fixes it); equal to the torch path either kernel."""
    s = make_step(dtype, decode_lens=(1, 31, 32, 33, 64, 65, 96, 200), chunks=((60, 9),), heads=8, kv_heads=2,
                  head_dim=64, block_tokens=16, window=window)
    s["max_len"] = 4096
    check(s, split_tokens=32, gqa_shared=gqa_shared)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(8, 4, 64), (8, 2, 64), (16, 2, 64), (16, 4, 128), (16, 8, 128),
                                                     (16, 2, 128), (8, 8, 64), (4, 1, 96)])
def test_gqa_shared_kernel(dtype, heads, kv_heads, head_dim):
    """paged_attention(gqa_shared=True): one block per KV head (built for groups of 2, 4 and 8 at head_dim 64 and
    128, the group of 8 at 128 being the largest footprint; the last two shapes take the per-head kernel).
    Decodes, chunks with cached context, a long context over several splits, a graph-style fixed split with empty
    splits, a sliding window."""
    shape = dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    check(make_step(dtype, decode_lens=(1, 2, 16, 17, 33, 100), chunks=((0, 12), (40, 25)), **shape), gqa_shared=True)
    long = make_step(dtype, decode_lens=(3000, 7, 513), block_tokens=256, pad_rows=0, **shape)
    check(long, gqa_shared=True)
    long["max_len"] = 65536
    check(long, split_tokens=kernels.default_split_tokens(3, kv_heads, 65536), gqa_shared=True)
    check(make_step(dtype, chunks=((30, 20),), decode_lens=(100, 5, 64), window=24, **shape), split_tokens=32,
          gqa_shared=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("warps", [8, 16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_per_head_kernel_with_more_warps(dtype, warps, head_dim):
    """paged_attention(warps=8 or 16): decodes (contexts shorter than one round of keys too), chunks with cached
    context, several splits with empty ones, a sliding window."""
    shape = dict(heads=8, kv_heads=2, head_dim=head_dim)
    check(make_step(dtype, decode_lens=(1, 2, 16, 17, 33, 100), chunks=((0, 12), (40, 25)), **shape), warps=warps)
    long = make_step(dtype, decode_lens=(3000, 7, 513), block_tokens=256, pad_rows=0, **shape)
    check(long, warps=warps)
    long["max_len"] = 65536
    check(long, split_tokens=kernels.default_split_tokens(3, 8, 65536), warps=warps)
    check(make_step(dtype, chunks=((30, 20),), decode_lens=(100, 5, 64), window=24, **shape), split_tokens=32,
          warps=warps)


def test_a_split_the_grid_cannot_hold_is_refused_with_the_fix():
    s = make_step(torch.float32, decode_lens=(5,), heads=4, kv_heads=1, head_dim=64)
    with pytest.raises(InvalidArgumentError, match="split_tokens must be >= 1"):
        run_kernels(s, split_tokens=0)
    s["max_len"] = 70000
    with pytest.raises(InvalidArgumentError, match="pass split_tokens >= 2"):
        run_kernels(s, split_tokens=1)


def test_more_warps_at_an_unbuilt_head_dim_is_refused():
    s = make_step(torch.float32, decode_lens=(5,), heads=4, kv_heads=1, head_dim=96)
    with pytest.raises(InvalidArgumentError, match="warps must be 4, or 8 or 16 at head_dim 64 or 128"):
        run_kernels(s, warps=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_skips_negative_rows(dtype):
    """A graph's padding rows carry write row -1: nothing is written for them."""
    s = make_step(dtype, decode_lens=(5, 40, 17))
    rows = s["meta"].write_rows.clone()
    rows[1] = -1
    cache = s["cache"].clone()
    kernels.write_kv(cache, s["k"], s["v"], rows, s["k_off"], s["v_off"])
    want = s["cache"].clone()
    keep = torch.tensor([0, 2], device=DEV)
    want.index_copy_(0, rows[keep] + s["k_off"], s["k"][keep].reshape(2, -1))
    want.index_copy_(0, rows[keep] + s["v_off"], s["v"][keep].reshape(2, -1))
    torch.cuda.synchronize()
    assert torch.equal(cache, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_with_cached_context(dtype):
    """Chunks with cached context (one crossing block boundaries), a fresh chunk, and decodes in one step."""
    check(make_step(dtype, chunks=((0, 12), (40, 25), (7, 1)), decode_lens=(9, 64)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sliding_window(dtype):
    check(make_step(dtype, chunks=((30, 20),), decode_lens=(100, 5, 64), window=24), split_tokens=32)


def test_float16_decode():
    check(make_step(torch.float16, decode_lens=(3, 70), chunks=((16, 8),)))


def test_cache_in_a_cuda_slot():
    """The real setting: the cache is a pinned=False view over a cuda-backend slot (VMM-mapped pages)."""
    from warmserve.memory import PAGE_BYTES, PagePool

    if not __import__("warmserve.memory", fromlist=["cuda_compiled"]).cuda_compiled():
        pytest.skip("no cuda backend in this build")
    with PagePool(16 * PAGE_BYTES, backend="cuda") as pool:
        slot = pool.create_slot(8 * PAGE_BYTES, "kv")
        slot.map(0, 8)
        rows = 8 * PAGE_BYTES // (2 * 64 * 4)
        cache = slot.tensor(0, (rows, 2 * 64), torch.float32, pinned=False)
        s = make_step(torch.float32, decode_lens=(50, 300), kv_heads=2, head_dim=64)
        region = cache[:s["cache"].shape[0]]
        region.copy_(s["cache"])
        out_k, cache_k = run_kernels(s, cache=region)
        out_t, cache_t = run_torch(s)
        torch.cuda.synchronize()
        assert cache_k.data_ptr() == slot.base_address and torch.equal(cache_k, cache_t)
        torch.testing.assert_close(out_k, out_t, **TOL[torch.float32])
        del cache, region, cache_k, s
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("row_elems", [4096 + 8, 4097])  # 16-byte rows (the int4 path) and not (the byte path)
def test_copy_blocks_compact_and_relocate(dtype, row_elems):
    g = torch.Generator().manual_seed(3)
    region = torch.randn(16, row_elems, generator=g).to(DEV, dtype)
    ref = region.clone()
    kernels.copy_blocks(region, region, [10, 7, 12], [0, 1, 2])  # compaction inside one region
    ref[[0, 1, 2]] = ref[[10, 7, 12]]
    torch.cuda.synchronize()
    assert torch.equal(region, ref)
    other = torch.zeros(5, row_elems, dtype=dtype, device=DEV)
    kernels.copy_blocks(other, region, torch.tensor([3, 4], device=DEV), torch.tensor([4, 0], device=DEV))
    torch.cuda.synchronize()
    assert torch.equal(other[4], region[3]) and torch.equal(other[0], region[4])
    assert torch.count_nonzero(other[1:4]) == 0


def test_copy_bytes_between_slots():
    a = torch.randn(3, 1 << 20, device=DEV)
    b = torch.empty_like(a)
    kernels.copy_bytes(b, a)
    torch.cuda.synchronize()
    assert torch.equal(a, b)


def test_graph_capture_replays_equal_to_eager():
    """The decode kernels captured in a CUDA graph (fixed max_len and split_tokens) replay the eager result, and
    follow new cache contents and new query values at the same addresses."""
    s = make_step(torch.float32, decode_lens=(700, 20, 256), head_dim=64, block_tokens=256, pad_rows=0)
    cache = s["cache"].clone()
    eager, _ = run_kernels(s, cache=cache.clone(), split_tokens=256)
    graph = torch.cuda.CUDAGraph()
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        run_kernels(s, cache=cache, split_tokens=256)
    torch.cuda.current_stream().wait_stream(warm)
    with torch.cuda.graph(graph):
        static_out, _ = run_kernels(s, cache=cache, split_tokens=256)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, eager, atol=0, rtol=0)
    s["q"].mul_(-1.0)
    graph.replay()
    again, _ = run_kernels(s, cache=cache.clone(), split_tokens=256)
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, again, atol=0, rtol=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from warmserve.engine.demo import SMALL_MODELS, write_demo_models

    return write_demo_models(str(tmp_path_factory.mktemp("demo")), names=SMALL_MODELS)


def engine_against_torch_path(path, route: str):
    """The engine with use_kernels (set by default on CUDA) against the same engine on the torch path: same
    greedy tokens, logits within 1e-3, with chunked prefill (max_batch_tokens=48) so chunks have cached context.
    route: Engine.cached_prefill, the route of those chunks (gather + SDPA, the tiled kernel, paged_attention row by
    row)."""
    from warmserve.engine import Engine, SamplingParams, load_model
    from warmserve.memory import PagePool

    results = {}
    with PagePool(1 << 30, backend="cuda") as pool:
        for use in (True, False):
            lm = load_model(path, pool).wait()
            eng = Engine(lm, max_batch_tokens=48)
            assert eng.use_kernels  # float32, head_dim a multiple of 32, kernels available
            eng.use_kernels = use
            eng.cached_prefill = route
            prompts = [torch.randint(0, lm.config.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
                       for n in (3, 17, 64, 261)]
            results[use] = eng.generate_with_logits(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
            eng.close()
            lm.close()
    assert results[True][0] == results[False][0]
    for mine, ref in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(mine, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("route", ["sdpa", "rows"])
@pytest.mark.parametrize("name", ["llama-20m", "qwen2-30m"])
def test_engine_kernel_path_matches_torch_path(name, route, demo):
    """Chunks with cached context through SDPA (the default) or paged_attention; test_prefill_kernel.py runs them
    through the tiled kernel (a file of its own, see there)."""
    engine_against_torch_path(demo[name], route)
