"""The CPU-testable parts of the decode-step CUDA graphs (engine/graphs.py): buckets, input packing, the option.

Replay itself needs a GPU: tests/gpu/test_graphs.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from warmserve.engine.attention import paged_meta
from warmserve.engine.graphs import (HEAD_COLUMNS, MAX_GRAPH_BATCH, DecodeGraphs, bucket_for, capture_decode_graphs,
                                     covers, decode_buckets, graphs_for, pack_decode_inputs, prewarm_decode_graphs,
                                     resolve_cuda_graphs, table_width)
from warmserve.errors import BackendUnavailableError, InvalidArgumentError


def test_buckets_are_powers_of_two_then_the_bound():
    assert decode_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert decode_buckets(20) == (1, 2, 4, 8, 16, 20)
    assert decode_buckets(1) == (1,)
    assert decode_buckets(3) == (1, 2, 3)
    assert decode_buckets(10_000)[-1] == MAX_GRAPH_BATCH
    assert decode_buckets(100, max_batch=8) == (1, 2, 4, 8)
    for bad in (0, -1, True, 2.0, "8"):
        with pytest.raises(InvalidArgumentError):
            decode_buckets(bad)


def test_a_batch_pads_to_the_next_bucket_and_runs_eagerly_past_the_largest():
    b = decode_buckets(20)
    assert [bucket_for(n, b) for n in (1, 2, 3, 5, 8, 9, 16, 17, 20)] == [1, 2, 4, 8, 8, 16, 16, 20, 20]
    assert bucket_for(21, b) is None
    with pytest.raises(InvalidArgumentError):
        bucket_for(0, b)


def test_a_prewarms_graphs_serve_an_engine_of_fewer_sequences_as_they_are():
    """Found in review: an engine of 24 sequences after a prewarm for 32 captured a bucket 24 at activation, and
    through the worker (prewarm for 8, activation at the default 32) every activation captured again. The graphs
    serve any engine whose batches all have a bucket; a larger max_num_seqs still needs its own."""
    assert covers(decode_buckets(32), 24) and covers(decode_buckets(32), 32) and covers(decode_buckets(8), 1)
    assert not covers(decode_buckets(8), 32) and not covers((), 1)
    assert covers(decode_buckets(10_000), 10_000)  # batches past MAX_GRAPH_BATCH run eagerly anyway


def test_table_width_covers_the_longest_context_within_the_kv_capacity():
    assert table_width(8192, 1000, 256) == 32
    assert table_width(8193, 1000, 256) == 33
    assert table_width(8192, 5, 256) == 5  # a small KV share: no sequence can hold more blocks
    assert table_width(100, 5, 256) == 1


def _decodes():
    # (token id, position, block ids): positions in the first, second and fourth block
    return [(11, 5, [7]), (12, 256, [3, 9]), (13, 1000, [2, 4, 6, 8, 1])]


def test_packing_matches_the_eager_kernel_path_and_pads_with_harmless_rows():
    T, rpb, width = 256, 2 * 3 * 256 + 2, 6
    host = np.full((8, HEAD_COLUMNS + width), 12345, dtype=np.int32)
    decodes = _decodes()
    pack_decode_inputs(host, decodes, 4, T, rpb)
    assert host[:3, 0].tolist() == [11, 12, 13]
    assert host[:3, 1].tolist() == [5, 256, 1000]
    assert host[:3, 2].tolist() == [7 * rpb + 5, 9 * rpb + 0, 8 * rpb + 1000 % T]
    # The eager kernel path's metadata of the same decodes (rows 0..2, one token each) reads the same blocks and
    # the same number of keys.
    meta = paged_meta([(i, p, 1, blocks) for i, (_, p, blocks) in enumerate(decodes)], T, rpb, 0, "cpu")
    assert host[:3, 3].tolist() == meta.row_len.tolist()
    for i, (_, p, _) in enumerate(decodes):
        nb = p // T + 1
        assert host[i, HEAD_COLUMNS:HEAD_COLUMNS + nb].tolist() == meta.block_tables[i, :nb].tolist()
    # padding row: token 0 at position 0, nothing written, one key read in the first block of row 0
    assert host[3, :HEAD_COLUMNS + 1].tolist() == [0, 0, -1, 1, 7]
    # rows past the bucket are not touched
    assert (host[4:] == 12345).all()


def test_packing_refuses_what_a_graph_cannot_read():
    host = np.zeros((4, HEAD_COLUMNS + 2), dtype=np.int32)
    with pytest.raises(InvalidArgumentError, match="graph reads at most 2"):
        pack_decode_inputs(host, [(1, 600, [0, 1, 2])], 1, 256, 1000)  # needs a third block
    with pytest.raises(InvalidArgumentError, match="the sequence has 1"):
        pack_decode_inputs(host, [(1, 300, [0])], 1, 256, 1000)  # its second block was never allocated
    with pytest.raises(InvalidArgumentError):
        pack_decode_inputs(host, _decodes()[:2], 1, 256, 1000)  # 2 decodes, bucket 1
    with pytest.raises(InvalidArgumentError):
        pack_decode_inputs(host, [(1, 1, [0])], 8, 256, 1000)  # bucket larger than the buffer


def test_option_auto_is_off_on_cpu_and_true_says_why_it_cannot_run():
    assert resolve_cuda_graphs(None, device="cpu", kernels_ok=False, tp=1) == (
        False, "the model runs on cpu; CUDA graphs need a CUDA device")
    assert resolve_cuda_graphs(False, device="cuda:0", kernels_ok=True, tp=1) == (False, "cuda_graphs=False")
    assert resolve_cuda_graphs(None, device="cuda:0", kernels_ok=True, tp=1) == (True, None)
    assert resolve_cuda_graphs(True, device="cuda:0", kernels_ok=True, tp=1) == (True, None)
    use, why = resolve_cuda_graphs(None, device="cuda:0", kernels_ok=False, tp=1)
    assert not use and "kernels" in why
    use, why = resolve_cuda_graphs(None, device="cuda:0", kernels_ok=True, tp=2)
    assert not use and "tensor-parallel" in why
    with pytest.raises(BackendUnavailableError, match="Fix: pass cuda_graphs=None"):
        resolve_cuda_graphs(True, device="cpu", kernels_ok=False, tp=1)
    for bad in ("on", 1, 0):
        with pytest.raises(InvalidArgumentError):
            resolve_cuda_graphs(bad, device="cpu", kernels_ok=False, tp=1)


def test_cpu_engine_runs_eagerly_and_refuses_required_graphs(demo_dir, pool):
    from warmserve.engine import Engine, SamplingParams, load_model

    lm = load_model(demo_dir["llama-20m"], pool).wait()
    try:
        with pytest.raises(BackendUnavailableError):
            Engine(lm, cuda_graphs=True)
        with pytest.raises(InvalidArgumentError):
            Engine(lm, cuda_graphs="yes")
        assert not lm.active  # neither attempt activated the model
        with pytest.raises(BackendUnavailableError):
            capture_decode_graphs(lm, 4)
        with pytest.raises(BackendUnavailableError):
            DecodeGraphs(lm)
        assert prewarm_decode_graphs(lm, 4) is None and prewarm_decode_graphs(lm, 4, False) is None
        with pytest.raises(BackendUnavailableError):
            prewarm_decode_graphs(lm, 4, True)
        assert graphs_for(lm) is None
        with Engine(lm, max_num_seqs=4) as eng:
            assert eng.graphs is None and "cpu" in eng.graphs_off_reason
            out = eng.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=4, ignore_eos=True))
            assert [len(o) for o in out] == [4, 4] and eng.num_graph_steps == 0
    finally:
        lm.close()


def _contract_write_kv(cache, k, v, rows, k_off, v_off):
    """write_kv's contract (memory/kernels.py) in torch: negative rows write nothing."""
    keep = rows >= 0
    n = rows.shape[0]
    cache[rows[keep] + k_off] = k.reshape(n, -1)[keep]
    cache[rows[keep] + v_off] = v.reshape(n, -1)[keep]


def _contract_paged_attention(q, cache, bt, row_seq, row_len, *, k_off, v_off, rows_per_block, block_tokens, scale,
                              window=0, max_len=None, split_tokens=None, split_counters=None):
    """paged_attention's contract in torch, one query row at a time (max_len and the split only bound the work).
    Split counters, where given (the graphs pass their own): zeros, one per row and head at least."""
    assert max_len >= int(row_len.max()) and split_tokens >= 1
    if split_counters is not None:
        assert split_counters.dtype == torch.int32 and split_counters.numel() >= q.shape[0] * q.shape[1]
        assert not split_counters.any()
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


def test_graph_body_gives_the_engines_decode_logits(demo_dir, pool, monkeypatch):
    """What a graph captures (decode_body over pack_decode_inputs' rows, padding included), with the two kernels
    replaced by their contract in torch, gives the eager CPU engine's logits step after step, across a KV block
    boundary (positions 255 -> 256). The replay itself runs on a GPU (tests/gpu/test_graphs.py)."""
    from warmserve.engine import Engine, SamplingParams, load_model
    from warmserve.engine.graphs import decode_body
    from warmserve.memory import kernels

    monkeypatch.setattr(kernels, "write_kv", _contract_write_kv)
    monkeypatch.setattr(kernels, "paged_attention", _contract_paged_attention)
    lm = load_model(demo_dir["llama-20m"], pool).wait()
    try:
        with Engine(lm, max_num_seqs=8, target_free_blocks=1) as eng:
            eng.record_logits = True
            g = torch.Generator().manual_seed(1)
            for i, n in enumerate((250, 40, 3)):
                eng.add_request(str(i), torch.randint(0, lm.config.vocab_size, (n,), generator=g).tolist(),
                                SamplingParams(max_tokens=10, ignore_eos=True))
            eng.step()  # prefill
            kv, T = eng.kv, lm.block_tokens
            width = 2
            host = np.zeros((4, HEAD_COLUMNS + width), dtype=np.int32)
            for _ in range(8):
                chunks = eng.scheduler.schedule()
                decodes = [(eng._token(c.seq, c.start), c.start, c.seq.blocks) for c in chunks]
                pack_decode_inputs(host, decodes, 4, T, kv.rows_per_block)  # 3 decodes, one padding row
                with torch.inference_mode():
                    got = decode_body(eng.model, torch.from_numpy(host.copy()), kv.rows, kv.layer_offsets,
                                      max_len=width * T, rows_per_block=kv.rows_per_block, block_tokens=T,
                                      split_counters=torch.zeros(4 * lm.config.num_heads, dtype=torch.int32))
                eng._run(chunks)  # the eager CPU step (rewrites the same K/V)
                eng.kv.grow()
                for i, c in enumerate(chunks):
                    torch.testing.assert_close(got[i], eng.last_logits[c.seq.request_id], atol=1e-4, rtol=1e-4)
            assert [c.start for c in chunks] == [257, 47, 10]
    finally:
        lm.close()


@pytest.mark.parametrize("name", ["tiny-bias", "tiny-mistral"])
def test_the_prefill_warm_up_at_prewarm_runs_the_prefill_path_and_writes_no_kv(name, tiny_dir, monkeypatch):
    """warm_prefill (run by the first capture, at prewarm): the kernel path's fresh prefill, every K/V write row -1.
    With write_kv replaced by its contract (negative rows skipped, as the kernel does: tests/gpu/test_kernels.py),
    each layer writes once, nothing lands in the cache (one block's rows, as at capture), and the prompt's
    attention runs (SDPA, fresh chunk)."""
    import torch.nn.functional as F

    from warmserve.engine import Engine, load_model
    from warmserve.engine import attention
    from warmserve.engine.graphs import warm_prefill
    from warmserve.memory import PagePool, kernels

    writes, sdpa = [], []
    real_sdpa = F.scaled_dot_product_attention

    def write_kv(cache, k, v, rows, k_off, v_off):
        writes.append(rows.clone())
        keep = rows >= 0
        cache[rows[keep] + k_off] = k[keep].flatten(1)
        cache[rows[keep] + v_off] = v[keep].flatten(1)

    def counted_sdpa(q, *a, **kw):
        sdpa.append(q.shape[-2])
        return real_sdpa(q, *a, **kw)

    monkeypatch.setattr(kernels, "write_kv", write_kv)
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counted_sdpa)
    with PagePool(64 << 20) as pool:
        lm = load_model(tiny_dir[name], pool).wait()
        with Engine(lm) as eng:
            # one block's rows, as the capture's scratch cache (the slot's KV range is mapped only in part)
            cache = torch.randn(eng.kv.rows_per_block, eng.kv.rows.shape[1], dtype=eng.kv.rows.dtype)
            before = cache.clone()
            warm_prefill(eng.model, cache, eng.kv.layer_offsets, lm.block_tokens, eng.kv.rows_per_block)
            assert torch.equal(cache, before)
        lm.close()
    layers = lm.config.num_layers
    assert len(writes) == layers and all(bool((r == -1).all()) for r in writes)
    window = lm.config.sliding_window or 0
    assert sdpa == [min(16, window) if window else 16] * layers
