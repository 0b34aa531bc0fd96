"""Attention over the paged KV cache, with torch SDPA (the same code on CPU and CUDA).

One step's tokens are laid out flat: first the prefill chunks (each a run of rows of one sequence), then the
decode rows (one per sequence). ``AttnMeta`` says where each row's K/V goes in the cache and which cache slots
each query attends to; it is built once per step and shared by every layer.

The cache is addressed as rows of [kv_heads * head_dim]: the token at offset t of block b, layer l, K (s=0) or V
(s=1) is row ``b * rows_per_block + (2 * l + s) * block_tokens + t``. Step metadata holds the layer-0 K rows;
each layer adds its constant. Gathering rows with index_select is ~30x faster on CPU than 2-D advanced indexing
over the strided per-layer view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    #: First decode row in the flat layout; decode rows run to the end.
    row: int
    #: [B * S] cache rows (layer 0, K) of each sequence's context, padded with a valid row.
    rows: torch.Tensor
    #: [B, 1, 1, S] bool, True = attend.
    mask: torch.Tensor


@dataclass
class AttnMeta:
    #: [N] cache row (layer 0, K) where each token's K/V is written.
    write_rows: torch.Tensor
    prefills: list[PrefillChunk]
    decode: DecodeBatch | None


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
    Returns [N, H*D]."""
    n_rows, n_heads, head_dim = q.shape
    kvh = k.shape[1]
    cache.index_copy_(0, meta.write_rows + k_off, k.reshape(n_rows, -1))
    cache.index_copy_(0, meta.write_rows + v_off, v.reshape(n_rows, -1))
    out = torch.empty(n_rows, n_heads, head_dim, dtype=q.dtype, device=q.device)
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
    d = meta.decode
    if d is not None:
        b = n_rows - d.row
        qd = q[d.row:].unsqueeze(2)  # [B, H, 1, D]
        kd = cache.index_select(0, d.rows + k_off).view(b, -1, kvh, head_dim).transpose(1, 2)  # [B, KVH, S, D]
        vd = cache.index_select(0, d.rows + v_off).view(b, -1, kvh, head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=d.mask, scale=scale, enable_gqa=True)
        out[d.row:] = o.squeeze(2)
    return out.view(n_rows, n_heads * head_dim)
