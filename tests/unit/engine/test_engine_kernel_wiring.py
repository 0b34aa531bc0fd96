"""The engine's kernel path (AttnMeta.paged: write_kv, paged_attention for decodes, the tiled prefill kernel for
chunks with cached context) wired as on a GPU, run here on the CPU with the kernels' contracts written out in torch
(the CUDA kernels cannot run without a GPU; tests/gpu checks them against the torch path on one). What this checks
is the engine's side: which rows go to which kernel, the tiles, the one-row chunks' sub-vectors, the scatter back.
A row no kernel computes stays NaN, so a gap in the tiles shows up in the logits."""

from __future__ import annotations

import pytest
import torch

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.attention import paged_meta
from warmserve.memory import kernels


def _reference_rows(q, cache, block_tables, row_seq, row_len, *, k_off, v_off, rows_per_block, block_tokens, scale,
                    window=0):
    """Each query row over keys max(0, len - window)..len-1 of its sequence's blocks (the kernels' contract)."""
    n, heads, dim = q.shape
    kv_heads = cache.shape[1] // dim
    out = torch.empty_like(q)
    for r in range(n):
        length, seq = int(row_len[r]), int(row_seq[r])
        t = torch.arange(max(0, length - window) if window else 0, length)
        rows = block_tables[seq].long()[t // block_tokens] * rows_per_block + t % block_tokens
        k = cache[rows + k_off].view(-1, kv_heads, dim).repeat_interleave(heads // kv_heads, dim=1)
        v = cache[rows + v_off].view(-1, kv_heads, dim).repeat_interleave(heads // kv_heads, dim=1)
        p = (torch.einsum("hd,thd->ht", q[r].float(), k.float()) * scale).softmax(-1)
        out[r] = torch.einsum("ht,thd->hd", p, v.float()).to(q.dtype)
    return out


class _Kernels:
    """kernels.write_kv / paged_attention / prefill_attention as their docstrings define them, counting rows."""

    def __init__(self):
        self.rows = {"paged_attention": 0, "prefill_attention": 0}

    def write_kv(self, cache, k, v, write_rows, k_off, v_off):
        keep = write_rows >= 0
        n = write_rows.shape[0]
        cache.index_copy_(0, write_rows[keep] + k_off, k.reshape(n, -1)[keep])
        cache.index_copy_(0, write_rows[keep] + v_off, v.reshape(n, -1)[keep])

    def paged_attention(self, q, cache, block_tables, row_seq, row_len, *, max_len=None, split_tokens=None, **kw):
        assert max_len is None or max_len >= int(row_len.max())
        self.rows["paged_attention"] += q.shape[0]
        return _reference_rows(q, cache, block_tables, row_seq, row_len, **kw)

    def prefill_attention(self, q, cache, block_tables, row_seq, row_len, tiles, **kw):
        out = torch.full_like(q, float("nan"))  # "rows in no tile are left uninitialised"
        for first, n in tiles.tolist():
            assert 1 <= n <= kernels.PREFILL_TILE_ROWS
            assert len(set(row_seq[first:first + n].tolist())) == 1  # a tile is one sequence's consecutive rows
            assert row_len[first:first + n].tolist() == list(range(int(row_len[first]), int(row_len[first]) + n))
            sel = slice(first, first + n)
            out[sel] = _reference_rows(q[sel], cache, block_tables, row_seq[sel], row_len[sel], **kw)
            self.rows["prefill_attention"] += n
        return out


def test_paged_meta_tiles_the_chunks_of_several_rows_and_leaves_one_row_chunks_to_paged_attention():
    chunks = [(0, 40, 20, [3, 4]), (20, 7, 1, [5]), (21, 0, 3, [6]), (24, 90, 1, [7, 8])]
    m = paged_meta(chunks, 64, 10, 0, "cpu", tiled=True)
    assert m.rows.tolist() == list(range(25))
    assert m.tiles.tolist() == [[0, 16], [16, 4], [21, 3]]  # positions in rows; 20 rows cut at 16
    assert m.single.tolist() == [20, 24]
    assert m.row_len.tolist()[:2] == [41, 42] and m.max_len == 91
    untiled = paged_meta(chunks, 64, 10, 0, "cpu")
    assert untiled.tiles is None and untiled.single is None
    only_decodes = paged_meta([(0, 5, 1, [1]), (1, 9, 1, [2])], 64, 10, 0, "cpu", tiled=True)
    assert only_decodes.tiles is None  # nothing to tile: one paged_attention call, as CUDA graphs replay it


@pytest.mark.parametrize("name", ["llama-20m", "tiny-mistral"])
def test_the_kernel_path_gives_the_torch_paths_tokens_and_logits(name, demo_dir, tiny_dir, pool, monkeypatch):
    """Chunked prefill (max_batch_tokens=48: chunks with cached context next to decodes, and a sliding window on
    tiny-mistral) through the kernel path's wiring against the torch path: same greedy tokens, logits within
    1e-4; both kernels computed rows."""
    path = {**demo_dir, **tiny_dir}[name]
    fake = _Kernels()
    for f in ("write_kv", "paged_attention", "prefill_attention"):
        monkeypatch.setattr(kernels, f, getattr(fake, f))
    results = {}
    for use in (True, False):
        lm = load_model(path, pool).wait()
        try:
            with Engine(lm, max_batch_tokens=48) as eng:
                eng.use_kernels = use
                eng.record_logits = True
                g = torch.Generator().manual_seed(0)
                for i, n in enumerate((3, 17, 64, 101)):
                    prompt = torch.randint(0, lm.config.vocab_size, (n,), generator=g).tolist()
                    eng.add_request(str(i), prompt, SamplingParams(max_tokens=5, ignore_eos=True))
                toks, logits = {}, {}
                while eng.has_unfinished():
                    for o in eng.step():
                        toks.setdefault(o.request_id, []).extend(o.token_ids)
                    for rid, row in eng.last_logits.items():
                        logits.setdefault(rid, []).append(row)
                    eng.last_logits = {}
        finally:
            lm.close()
        results[use] = toks, {k: torch.stack(v) for k, v in logits.items()}
    assert fake.rows["prefill_attention"] > 0 and fake.rows["paged_attention"] > 0
    assert results[True][0] == results[False][0]
    for rid, mine in results[True][1].items():
        assert not mine.isnan().any()
        torch.testing.assert_close(mine, results[False][1][rid], atol=1e-4, rtol=1e-4)
