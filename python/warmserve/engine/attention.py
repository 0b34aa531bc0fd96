"""Attention over the paged KV cache, with torch SDPA (the same code on CPU and CUDA).

One step's tokens are laid out flat: first the prefill chunks (each a run of rows of one sequence), then the
decode rows (one per sequence; on the torch path in ascending order of their keys, attending in groups of like
lengths: ``decode_batches``). ``AttnMeta`` says where each row's K/V goes in the cache and which cache slots
each query attends to; it is built once per step and shared by every layer.

The cache is addressed as rows of [kv_heads * head_dim]: the token at offset t of block b, layer l, K (s=0) or V
(s=1) is row ``b * rows_per_block + (2 * l + s) * block_tokens + t``. Step metadata holds the layer-0 K rows;
each layer adds its constant. Gathering rows with index_select is ~30x faster on CPU than 2-D advanced indexing
over the strided per-layer view.

On CUDA with the kernels of warmserve.memory.kernels (csrc/kernels) available, the engine sets ``AttnMeta.paged``
instead of the gather indices: K/V are written by one kernel and decode rows attend straight from the pages
through paged_attention (no gathered copy of the context). Chunks of 2+ rows with cached context (chunked
prefill) take the route ``Engine.cached_prefill`` names: by default the gather and SDPA below (flash attention on
tensor cores), or the tiled prefill kernel, or paged_attention row by row. Fresh prefill chunks take SDPA over
their own K/V. This torch path stays the CPU implementation and the reference tests/gpu/test_kernels.py checks
the kernels against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math

import torch
import torch.nn.functional as F

from warmserve.errors import InvalidArgumentError
from warmserve.memory import kernels


@dataclass
class PrefillChunk:
    #: First row of this chunk in the step's flat token layout.
    row: int
    #: Query tokens in the chunk.
    n: int
    #: Tokens of this sequence already in the cache before the chunk.
    start: int
    #: Cache rows (layer 0, K) of all start+n context tokens; None when start == 0.
    ctx_rows: torch.Tensor | None = None
    #: [n, start+n] bool, True = attend; None = plain causal over the chunk.
    mask: torch.Tensor | None = None


@dataclass
class DecodeBatch:
    """Decode rows that attend together, each to S keys (its own, then padding: ``decode_batches``)."""
    #: First row of the group in the flat layout.
    row: int
    #: [B * S] cache rows (layer 0, K) of each row's keys, padded with a valid row.
    rows: torch.Tensor
    #: [B, 1, 1, S] bool, True = attend; None: no row has padding.
    mask: torch.Tensor | None
    #: Rows in the group (B); None: they run to the end of the layout.
    n: int | None = None


#: Padding a decode group may carry whatever its real keys (``decode_batches``): below it, a group of its own
#: costs more in calls than the padding does.
DECODE_PAD_SLACK_TOKENS = 256


@dataclass
class PagedMeta:
    """A step as the CUDA kernels read it: the query rows they compute (decode rows and chunks with cached
    context), each with its sequence's block table and its number of visible keys."""
    #: int64 [M]: rows of the flat layout the kernels compute, ascending and unique (so M == N means all rows,
    #: in order: attend() then skips the gather and scatter of q and the output).
    rows: torch.Tensor
    #: int32 [S, W]: block ids of each such sequence in token order (padded with its first block).
    block_tables: torch.Tensor
    #: int32 [M]: the block-table row of each computed row.
    row_seq: torch.Tensor
    #: int32 [M]: keys visible to each computed row (its position + 1).
    row_len: torch.Tensor
    #: The largest row_len (on the host, so the kernels' split is chosen without a device sync).
    max_len: int
    rows_per_block: int
    block_tokens: int
    #: Sliding window in tokens; 0 = none.
    window: int
    #: Keys per split of the attention kernel; None = chosen from max_len (engine/graphs.py fixes it per bucket).
    split_tokens: int | None = None
    #: int32 [n_tiles, 2] (first position in ``rows``, rows): the chunks of 2+ rows, which the tiled prefill
    #: kernel computes (each key read once per tile of 16 rows, not once per row); None: every row is
    #: paged_attention's.
    tiles: torch.Tensor | None = None
    #: With tiles: int64 positions in ``rows`` of the one-row chunks (decodes), which paged_attention computes
    #: (split over long contexts); None when there are none.
    single: torch.Tensor | None = None
    #: row_seq and row_len of those rows, taken once per step rather than once per layer.
    single_seq: torch.Tensor | None = None
    single_len: torch.Tensor | None = None
    #: The largest row_len among the one-row chunks (their paged_attention call's max_len).
    single_max_len: int = 0
    #: int32, all zero: where paged_attention's splits count themselves (kernels.paged_attention split_counters);
    #: a CUDA graph's own. None: a zeroed one per call.
    split_counters: torch.Tensor | None = None


@dataclass
class AttnMeta:
    #: [N] cache row (layer 0, K) where each token's K/V is written.
    write_rows: torch.Tensor
    prefills: list[PrefillChunk]
    #: The torch path's decode groups (a DecodeBatch alone, as callers that build one pass it, is one group).
    decode: list[DecodeBatch] | DecodeBatch | None
    #: Set: the kernel path (its rows are in neither prefills nor decode); None: the torch path.
    paged: PagedMeta | None = None
    #: The torch path's writes, worked out on the step's first layer (a device sync on CUDA, once a step):
    #: (write rows, positions of those rows in the step) without the negative rows; positions None: every row.
    _writes: tuple[torch.Tensor, torch.Tensor | None] | None = field(default=None, init=False, repr=False,
                                                                     compare=False)

    def all_paged(self, n_rows: int) -> bool:
        """Whether all n_rows rows of the step are the kernel path's (a decode-only step, or a CUDA graph's)."""
        return self.paged is not None and self.paged.rows.shape[0] == n_rows

    def torch_writes(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The torch path's (rows, positions) of write_rows, skipping a negative row as write_kv does (a CUDA
        graph's padding rows and warm_prefill carry -1): sent to index_copy_ it would overwrite row -1 + k_off
        of another block, or raise on layer 0."""
        if self._writes is None:
            keep = self.write_rows >= 0
            if bool(keep.all()):
                self._writes = (self.write_rows, None)
            else:
                at = keep.nonzero().squeeze(1)
                self._writes = (self.write_rows.index_select(0, at), at)
        return self._writes


def kernels_usable(device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether attend() can take the kernel path for this model on this device."""
    return (torch.device(device).type == "cuda" and dtype in (torch.float32, torch.float16, torch.bfloat16)
            and head_dim % 32 == 0 and 32 <= head_dim <= 256 and kernels.kernels_available())


def paged_meta(chunks: list[tuple[int, int, int, list[int]]], block_tokens: int, rows_per_block: int, window: int,
               device, tiled: bool = False) -> PagedMeta:
    """PagedMeta of the chunks (row, start, n, blocks) the kernels compute: n query tokens at positions
    start..start+n-1 of a sequence whose cache blocks are `blocks`, its K/V written in the same step. tiled: the
    chunks of 2+ rows go to the tiled prefill kernel (PagedMeta.tiles), the one-row ones to paged_attention."""
    rows, seq, lens, tables, multi, single = [], [], [], [], [], []
    for i, (row, start, n, blocks) in enumerate(chunks):
        if n > 1:
            multi.append((len(rows), n))
        else:
            single.append(len(rows))
        rows += range(row, row + n)
        seq += [i] * n
        lens += range(start + 1, start + n + 1)
        tables.append(list(blocks[:math.ceil((start + n) / block_tokens)]))
    width = max((len(t) for t in tables), default=1)
    bt = [t + [t[0]] * (width - len(t)) for t in tables] or [[0]]
    meta = PagedMeta(torch.tensor(rows, dtype=torch.int64, device=device),
                     torch.tensor(bt, dtype=torch.int32, device=device),
                     torch.tensor(seq, dtype=torch.int32, device=device),
                     torch.tensor(lens, dtype=torch.int32, device=device), max(lens, default=0), rows_per_block,
                     block_tokens, window)
    if tiled and multi:
        meta.tiles = kernels.prefill_tiles(multi, device)
        if single:
            meta.single = torch.tensor(single, dtype=torch.int64, device=device)
            meta.single_seq = torch.tensor([seq[i] for i in single], dtype=torch.int32, device=device)
            meta.single_len = torch.tensor([lens[i] for i in single], dtype=torch.int32, device=device)
            meta.single_max_len = max(lens[i] for i in single)
    return meta


def decode_batches(rows: list[tuple[int, int, list[int]]], block_tokens: int, rows_per_block: int, window: int,
                   device) -> list[DecodeBatch]:
    """The torch path's decode rows, (flat row, keys up to and with its own token, cache blocks) each, one flat row
    after the other in ascending order of the keys they attend to (all of them, or the last ``window``), as groups
    padded to their longest. A group ends where the next row would make its padding exceed both its real keys and
    DECODE_PAD_SLACK_TOKENS: one 7000-token context padded 31 short ones to its length, and the step with it 158x
    (found in review). So a layer gathers at most twice the real keys, plus the slack once a group."""
    keys = [min(n, window) if window else n for _, n, _ in rows]
    out, i = [], 0
    while i < len(rows):
        j, real = i + 1, keys[i]
        while j < len(rows) and (j + 1 - i) * keys[j] - real - keys[j] <= max(real + keys[j], DECODE_PAD_SLACK_TOKENS):
            real += keys[j]
            j += 1
        out.append(_decode_batch(rows[i:j], keys[i:j], block_tokens, rows_per_block, device))
        i = j
    return out


def _decode_batch(rows, keys: list[int], block_tokens: int, rows_per_block: int, device) -> DecodeBatch:
    T = block_tokens
    lens = torch.tensor([n for _, n, _ in rows])
    width = torch.tensor(keys)
    S = max(keys)
    nb = -(-int(lens.max()) // T)
    table = torch.tensor([b[:nb] + [b[0]] * (nb - len(b[:nb])) for _, _, b in rows], dtype=torch.long)
    ar = torch.arange(S)
    # Padding columns read the row's last written position (masked all the same): an unwritten row holds whatever
    # its reused page held, and a NaN/Inf there poisons the masked softmax row (0 * NaN in the weighted sum of V)
    # however it is masked.
    pos = (lens - width)[:, None] + torch.minimum(ar[None, :], width[:, None] - 1)
    idx = table.gather(1, pos // T) * rows_per_block + pos % T
    mask = None if min(keys) == S else (ar[None, :] < width[:, None])[:, None, None, :].to(device)
    return DecodeBatch(rows[0][0], idx.view(-1).to(device), mask, len(rows))


def _paged_attend(p: PagedMeta, q: torch.Tensor, cache: torch.Tensor, k_off: int, v_off: int,
                  scale: float) -> torch.Tensor:
    """The kernels' attention of p's rows (q holds exactly those rows, in p.rows order): [M, H, D]."""
    geometry = dict(k_off=k_off, v_off=v_off, rows_per_block=p.rows_per_block, block_tokens=p.block_tokens,
                    scale=scale, window=p.window)
    if p.tiles is None:
        return kernels.paged_attention(q, cache, p.block_tables, p.row_seq, p.row_len, max_len=p.max_len,
                                       split_tokens=p.split_tokens, split_counters=p.split_counters, **geometry)
    o = kernels.prefill_attention(q, cache, p.block_tables, p.row_seq, p.row_len, p.tiles, **geometry)
    if p.single is not None:
        s = p.single
        o.index_copy_(0, s, kernels.paged_attention(
            q.index_select(0, s), cache, p.block_tables, p.single_seq, p.single_len, max_len=p.single_max_len,
            split_tokens=p.split_tokens, **geometry))
    return o


def causal_mask(n: int, start: int, window: int, device) -> torch.Tensor:
    """[n, start+n] mask for queries at positions start..start+n-1 over keys 0..start+n-1."""
    q = torch.arange(start, start + n, device=device)[:, None]
    k = torch.arange(start + n, device=device)[None, :]
    m = k <= q
    if window:
        m &= (q - k) < window
    return m


def attend(meta: AttnMeta, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor,
           k_off: int, v_off: int, scale: float) -> torch.Tensor:
    """q [N, H, D], k/v [N, KVH, D] (this step's rows); cache [rows, KVH*D] with this layer's K and V row offsets.
    Returns [N, H*D]. k and v None: already in the cache (kernels.rope_qkv_to_cache), where every row is the
    kernels' (meta.all_paged)."""
    n_rows, n_heads, head_dim = q.shape
    p = meta.paged
    if k is None:
        if not meta.all_paged(n_rows):
            raise InvalidArgumentError("attend: k and v may be left out only where every row is the kernels' (a "
                                       "decode-only step); this step has prefill rows. Fix: pass k and v")
        return _paged_attend(p, q.contiguous(), cache, k_off, v_off, scale).view(n_rows, n_heads * head_dim)
    kvh = k.shape[1]
    if p is not None:
        kernels.write_kv(cache, k.contiguous(), v.contiguous(), meta.write_rows, k_off, v_off)
    else:
        rows, at = meta.torch_writes()
        kw, vw = k.reshape(n_rows, -1), v.reshape(n_rows, -1)
        if at is not None:
            kw, vw = kw.index_select(0, at), vw.index_select(0, at)
        cache.index_copy_(0, rows + k_off, kw)
        cache.index_copy_(0, rows + v_off, vw)
    if meta.all_paged(n_rows):
        # Every row is the kernels' (a decode-only step, or a CUDA graph's): no gather, no scatter.
        return _paged_attend(p, q.contiguous(), cache, k_off, v_off, scale).view(n_rows, n_heads * head_dim)
    out = torch.empty(n_rows, n_heads, head_dim, dtype=q.dtype, device=q.device)
    if p is not None and p.rows.numel():
        out.index_copy_(0, p.rows, _paged_attend(p, q.index_select(0, p.rows), cache, k_off, v_off, scale))
    prefills = meta.prefills
    i = 0
    while i < len(prefills):
        c = prefills[i]
        if c.ctx_rows is None:
            # Fresh chunks sit back to back in the flat layout; a run of them with one length is a dense
            # [G, H, n, D] batch, so it takes one SDPA call instead of G (per-call launches dominate on a GPU).
            g = 1
            while (i + g < len(prefills) and prefills[i + g].ctx_rows is None and prefills[i + g].n == c.n
                   and prefills[i + g].row == c.row + g * c.n):
                g += 1
            rows = slice(c.row, c.row + g * c.n)
            qs = q[rows].view(g, c.n, n_heads, head_dim).transpose(1, 2)
            ks = k[rows].view(g, c.n, kvh, head_dim).transpose(1, 2)
            vs = v[rows].view(g, c.n, kvh, head_dim).transpose(1, 2)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
            out[rows].view(g, c.n, n_heads, head_dim).copy_(o.transpose(1, 2))
            i += g
            continue
        qs = q[c.row:c.row + c.n].transpose(0, 1).unsqueeze(0)
        ks = cache.index_select(0, c.ctx_rows + k_off).view(-1, kvh, head_dim).transpose(0, 1).unsqueeze(0)
        vs = cache.index_select(0, c.ctx_rows + v_off).view(-1, kvh, head_dim).transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=c.mask, scale=scale, enable_gqa=True)
        out[c.row:c.row + c.n] = o[0].transpose(0, 1)
        i += 1
    groups = meta.decode
    for d in (groups,) if isinstance(groups, DecodeBatch) else groups or ():
        b = n_rows - d.row if d.n is None else d.n
        qd = q[d.row:d.row + b].unsqueeze(2)  # [B, H, 1, D]
        kd = cache.index_select(0, d.rows + k_off).view(b, -1, kvh, head_dim).transpose(1, 2)  # [B, KVH, S, D]
        vd = cache.index_select(0, d.rows + v_off).view(b, -1, kvh, head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=d.mask, scale=scale, enable_gqa=True)
        out[d.row:d.row + b] = o.squeeze(2)
    return out.view(n_rows, n_heads * head_dim)
