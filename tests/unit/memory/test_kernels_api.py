"""The CUDA kernels' Python face on a machine without a GPU: the module imports, kernels_available() is False,
and every kernel raises a typed error instead of crashing (tests/gpu/test_kernels.py checks the numerics)."""

import pytest
import torch

from warmserve import _C
from warmserve.errors import BackendUnavailableError, DriverError, InvalidArgumentError
from warmserve.memory import kernels

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_module_reports_build():
    assert isinstance(kernels.kernels_compiled(), bool)
    assert kernels.kernels_compiled() == _C.kernels_compiled()


@no_gpu
def test_not_available_without_gpu():
    assert kernels.kernels_available() is False
    assert _C.kernels_device_count() == 0  # the static CUDA runtime finds no driver and says so, no crash


@no_gpu
@pytest.mark.parametrize("call", ["write_kv", "decode_attention", "paged_attention", "prefill_attention", "copy_blocks",
                                  "copy_bytes"])
def test_kernels_raise_typed_error(call):
    cache = torch.zeros(64, 128)
    q = torch.zeros(2, 4, 64)
    i32 = torch.zeros(2, dtype=torch.int32)
    calls = {
        "write_kv": lambda: kernels.write_kv(cache, torch.zeros(2, 128), torch.zeros(2, 128),
                                             torch.zeros(2, dtype=torch.int64), 0, 16),
        "decode_attention": lambda: kernels.decode_attention(
            q, cache, torch.zeros(2, 1, dtype=torch.int32), i32 + 1, k_off=0, v_off=16, rows_per_block=32,
            block_tokens=16, scale=0.125),
        "paged_attention": lambda: kernels.paged_attention(
            q, cache, torch.zeros(1, 1, dtype=torch.int32), i32, i32 + 1, k_off=0, v_off=16, rows_per_block=32,
            block_tokens=16, scale=0.125),
        "prefill_attention": lambda: kernels.prefill_attention(
            q, cache, torch.zeros(1, 1, dtype=torch.int32), i32, i32 + 1, kernels.prefill_tiles([(0, 2)], "cpu"),
            k_off=0, v_off=16, rows_per_block=32, block_tokens=16, scale=0.125),
        "copy_blocks": lambda: kernels.copy_blocks(cache.view(4, -1), cache.view(4, -1), [0], [1]),
        "copy_bytes": lambda: kernels.copy_bytes(cache, torch.ones_like(cache)),
    }
    with pytest.raises(BackendUnavailableError) as ei:
        calls[call]()
    assert "Fix:" in str(ei.value)
    assert torch.count_nonzero(cache) == 0  # nothing ran on the host behind the error


@no_gpu
def test_raw_launch_without_driver_is_typed():
    """A launch through the static CUDA runtime with no libcuda is a typed error (a stub build: unavailable)."""
    expected = DriverError if _C.kernels_compiled() else BackendUnavailableError
    with pytest.raises(expected) as ei:
        _C.kernel_copy_bytes(0, 0, 16, 0)
    if expected is DriverError:
        assert ei.value.name.startswith("cuda") and ei.value.code != 0
    with pytest.raises(expected):
        _C.kernel_write_kv(0, 0, 0, 0, 1, 64, 0, 16, 0, 0)


@pytest.mark.skipif(not _C.kernels_compiled(), reason="a stub build refuses every call as unavailable")
@pytest.mark.parametrize("head_dim,split_tokens,n_splits,heads,kv_heads,match", [
    (80, 256, 1, 4, 1, "head_dim must be a multiple of 32"),  # would run the head_dim 64 kernel on 80
    (288, 256, 1, 4, 1, "head_dim must be a multiple of 32"),  # no kernel: nothing would run, no error
    (64, 0, 1, 4, 1, "split_tokens > 0"),  # every split empty: zeros out
    (64, 256, 70000, 4, 1, "n_splits <= 65535"),  # past the grid's z limit
    (64, 256, 1, 6, 4, "no multiple of 4 KV heads")])
def test_the_raw_attention_binding_refuses_shapes_it_has_no_kernel_for_before_any_launch(
        head_dim, split_tokens, n_splits, heads, kv_heads, match):
    """kernels.py checks shapes first; a direct caller of the binding gets a typed error too, not a silent wrong
    answer (found in review). The checks come before any CUDA call, so they hold on this machine."""
    with pytest.raises(InvalidArgumentError, match=match):
        _C.kernel_paged_attention(0, 0, 0, 0, 1, 0, 0, 1, heads, kv_heads, head_dim, 1, 256, 0, 0, 0, 1.0,
                                  split_tokens, n_splits, 0, 0, 0, False, 0)


def test_copy_blocks_rejects_overlap_before_launch():
    t = torch.zeros(4, 32)
    with pytest.raises(InvalidArgumentError, match="rounds"):
        kernels.copy_blocks(t, t, [0, 1], [1, 2])
    with pytest.raises(InvalidArgumentError, match="out of range"):
        kernels.copy_blocks(t, t, [0], [4])


def test_prefill_rows():
    seq, lens = kernels.prefill_rows([(0, 0, 2), (3, 5, 3)], "cpu")
    assert seq.tolist() == [0, 0, 3, 3, 3] and lens.tolist() == [1, 2, 6, 7, 8]
    assert seq.dtype == lens.dtype == torch.int32


def test_prefill_tiles_cut_chunks_into_16_row_tiles():
    t = kernels.prefill_tiles([(0, 9), (9, 40), (49, 16), (65, 1)], "cpu")
    assert t.dtype == torch.int32 and t.tolist() == [[0, 9], [9, 16], [25, 16], [41, 8], [49, 16], [65, 1]]
    assert kernels.PREFILL_TILE_ROWS == 16 and kernels.prefill_tiles([], "cpu").shape == (0, 2)


def test_gqa_shared_kernel_only_for_its_built_shapes_and_several_rows():
    assert kernels.uses_gqa_shared(16, 32, 8, 128)  # groups of 4 at head_dim 128: built
    assert kernels.uses_gqa_shared(2, 16, 8, 64)
    assert not kernels.uses_gqa_shared(1, 32, 8, 128)  # one row: the per-head kernel (more blocks, less latency)
    assert not kernels.uses_gqa_shared(16, 32, 8, 128, gqa_shared=False)
    assert kernels.uses_gqa_shared(1, 32, 8, 128, gqa_shared=True)  # forced (bench/gpu_kernels.py at batch 1)
    assert not kernels.uses_gqa_shared(1, 32, 8, 96, gqa_shared=True)  # but never where it is not built
    assert not kernels.uses_gqa_shared(16, 32, 2, 128)  # a group of 16: not built
    assert not kernels.uses_gqa_shared(16, 4, 1, 96)  # head_dim 96: not built
    assert not kernels.uses_gqa_shared(16, 8, 8, 64)  # no grouping
    # the grid's heads, which the split is chosen for (engine/graphs.py fixes it per bucket with this)
    assert kernels.split_heads(16, 32, 8, 128) == 8
    assert kernels.split_heads(1, 32, 8, 128) == 32


def test_default_split_tokens():
    assert kernels.default_split_tokens(1, 8, 100) == 100  # short context: one split
    s = kernels.default_split_tokens(1, 32, 32768)  # one long sequence: split so 32 heads fill ~1056 blocks
    assert 256 <= s and -(-32768 // s) == 33
    assert kernels.default_split_tokens(1, 8, 32768) == 256  # 132 splits wanted; none shorter than 256 keys
    assert kernels.default_split_tokens(64, 32, 32768) == 32768  # a big batch fills the GPU unsplit


def _contract_write_kv(cache, k, v, rows, k_off, v_off):
    n = rows.shape[0]
    cache[rows + k_off] = k.reshape(n, -1)
    cache[rows + v_off] = v.reshape(n, -1)


def _contract_paged_attention(q, cache, bt, row_seq, row_len, *, k_off, v_off, rows_per_block, block_tokens, scale,
                              window=0, max_len=None, split_tokens=None, split_counters=None):
    """The kernels' contract (kernels.py) written plainly in torch, one query row at a time (split_tokens and
    split_counters decide how the kernel divides the work, not its result)."""
    assert max_len == int(row_len.max())
    n_rows, heads, d = q.shape
    kvh = cache.shape[1] // d
    out = torch.empty_like(q)
    for i in range(n_rows):
        n = int(row_len[i])
        pos = torch.arange(max(0, n - window) if window else 0, n)
        r = bt[int(row_seq[i])].long()[pos // block_tokens] * rows_per_block + pos % block_tokens
        kk = cache[r + k_off].view(-1, kvh, d).float().repeat_interleave(heads // kvh, 1)
        vv = cache[r + v_off].view(-1, kvh, d).float().repeat_interleave(heads // kvh, 1)
        w = torch.softmax(torch.einsum("lhd,hd->hl", kk, q[i].float()) * scale, -1)
        out[i] = torch.einsum("hl,lhd->hd", w, vv).to(q.dtype)
    return out


def _contract_prefill_attention(q, cache, bt, row_seq, row_len, tiles, **kw):
    """The tiled kernel's contract: the rows of each tile (one sequence's consecutive positions, at most 16) as
    paged_attention computes them; a row in no tile is left uninitialised, here NaN, so a gap shows in the logits."""
    out = torch.full_like(q, float("nan"))
    for first, n in tiles.tolist():
        rows = slice(first, first + n)
        assert 1 <= n <= kernels.PREFILL_TILE_ROWS and len(set(row_seq[rows].tolist())) == 1
        assert row_len[rows].tolist() == list(range(int(row_len[first]), int(row_len[first]) + n))
        out[rows] = _contract_paged_attention(q[rows], cache, bt, row_seq[rows], row_len[rows],
                                              max_len=int(row_len[rows].max()), **kw)
        _CALLED_ROWS["prefill_attention"] += n
    return out


_CALLED_ROWS = {"paged_attention": 0, "prefill_attention": 0}


def _counted_paged_attention(q, *args, **kw):
    _CALLED_ROWS["paged_attention"] += q.shape[0]
    return _contract_paged_attention(q, *args, **kw)


def test_paged_meta_tiles_the_chunks_of_several_rows_and_leaves_one_row_chunks_to_paged_attention():
    from warmserve.engine.attention import paged_meta

    chunks = [(0, 40, 20, [3, 4]), (20, 7, 1, [5]), (21, 0, 3, [6]), (24, 90, 1, [7, 8])]
    m = paged_meta(chunks, 64, 10, 0, "cpu", tiled=True)
    assert m.rows.tolist() == list(range(25)) and m.max_len == 91
    assert m.tiles.tolist() == [[0, 16], [16, 4], [21, 3]]  # positions in rows; 20 rows cut at 16
    assert m.single.tolist() == [20, 24] and m.single_max_len == 91
    assert m.single_seq.tolist() == [1, 3] and m.single_len.tolist() == [8, 91]
    untiled = paged_meta(chunks, 64, 10, 0, "cpu")
    assert untiled.tiles is None and untiled.single is None
    decodes = paged_meta([(0, 5, 1, [1]), (1, 9, 1, [2])], 64, 10, 0, "cpu", tiled=True)
    assert decodes.tiles is None  # nothing to tile: one paged_attention call, as a CUDA graph replays it


@pytest.mark.parametrize("route", ["sdpa", "tiled", "rows"])
@pytest.mark.parametrize("spec_name", ["gqa", "window"])
def test_engine_kernel_wiring_against_contract(spec_name, route, tmp_path, monkeypatch):
    """The engine's kernel path (PagedMeta built in Engine._run, attend's kernel branch) with the kernels replaced
    by their contract in torch gives the torch path's tokens and logits: chunked prefill with cached context,
    decodes, GQA, a sliding window; each Engine.cached_prefill route of the chunks of 2+ rows (gather + SDPA, the
    tiled kernel, paged_attention row by row) with the decodes beside them through paged_attention. The kernels
    themselves meet the contract on a GPU (tests/gpu/test_kernels.py, tests/gpu/test_prefill_kernel.py)."""
    from warmserve.engine import Engine, SamplingParams, load_model
    from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint
    from warmserve.memory import PagePool

    spec = {"gqa": DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=512),
            "window": DemoSpec("mistral", 64, 128, 2, 4, 1, sliding_window=24, vocab_size=512)}[spec_name]
    path = write_checkpoint(str(tmp_path), spec_name, config_dict(spec), tokenizer=build_tokenizer(512))
    monkeypatch.setattr(kernels, "write_kv", _contract_write_kv)
    monkeypatch.setattr(kernels, "paged_attention", _counted_paged_attention)
    monkeypatch.setattr(kernels, "prefill_attention", _contract_prefill_attention)
    monkeypatch.setitem(_CALLED_ROWS, "paged_attention", 0)
    monkeypatch.setitem(_CALLED_ROWS, "prefill_attention", 0)
    results = {}
    with PagePool(256 << 20) as pool:
        for use in (False, True):
            lm = load_model(path, pool).wait()
            eng = Engine(lm, max_batch_tokens=40)
            eng.use_kernels = use
            eng.cached_prefill = route
            prompts = [torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist()
                       for n in (3, 30, 70)]
            results[use] = eng.generate_with_logits(prompts, SamplingParams(max_tokens=5, ignore_eos=True))
            eng.close()
            lm.close()
    assert _CALLED_ROWS["paged_attention"] > 0
    assert (_CALLED_ROWS["prefill_attention"] > 0) == (route == "tiled")
    assert results[True][0] == results[False][0]
    for mine, ref in zip(results[True][1], results[False][1]):
        assert not mine.isnan().any()
        torch.testing.assert_close(mine, ref, atol=1e-4, rtol=1e-4)


def test_engine_refuses_an_unknown_cached_prefill_route(tmp_path):
    from warmserve.engine import Engine, load_model
    from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint
    from warmserve.errors import InvalidArgumentError
    from warmserve.memory import PagePool

    path = write_checkpoint(str(tmp_path), "m", config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=512)),
                            tokenizer=build_tokenizer(512))
    with PagePool(64 << 20) as pool:
        lm = load_model(path, pool).wait()
        eng = Engine(lm)
        assert eng.cached_prefill == "sdpa"
        with pytest.raises(InvalidArgumentError, match="sdpa, tiled, rows"):
            eng.cached_prefill = "flash"
        assert eng.cached_prefill == "sdpa"
        eng.close()
        lm.close()


def test_gemv_rows_limit_is_the_kernels():
    assert kernels.GEMV_MAX_ROWS == _C.KERNEL_GEMV_MAX_ROWS


@no_gpu
def test_gemv_is_not_usable_on_host_tensors_and_says_why():
    x, w = torch.zeros(1, 64), torch.ones(8, 64)
    assert kernels.gemv_usable(x, w) is False  # the model then takes F.linear
    with pytest.raises(BackendUnavailableError, match="Fix:"):
        kernels.gemv(x, w)


@no_gpu
def test_the_staged_gemvs_are_not_usable_on_host_tensors_and_say_why():
    x, w, ln = torch.zeros(1, 64), torch.ones(8, 64), torch.ones(64)
    assert kernels.gemv_staged_usable(x, w) is False  # the model then runs the norm and gemv (or F.linear)
    assert kernels.gemv_staged_usable(torch.zeros(1, 128), w) is False
    with pytest.raises(BackendUnavailableError, match="Fix:"):
        kernels.gemv_norm(x, ln, 1e-5, w)
    with pytest.raises(BackendUnavailableError, match="Fix:"):
        kernels.gemv_silu(torch.zeros(1, 128), w)
    assert _C.KERNEL_GEMV_STAGED_MAX_BYTES <= 48 << 10  # within the shared memory a block has without an opt-in
