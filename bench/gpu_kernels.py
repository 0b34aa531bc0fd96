"""Micro-benchmark of the CUDA kernels (csrc/kernels) against the torch path of engine/attention.py, on one GPU.

Decode attention of one layer (32 query heads, 8 KV heads, head_dim 128, bfloat16, 256-token blocks scattered
over the cache) at batch 1/16/64 and contexts 512..32768: the torch path (write with index_copy, gather the
context with index_select, SDPA) against write_kv + paged_attention; then the block copies of switching (1 GiB
as 512 blocks of 2 MiB: copy_blocks against torch indexing; copy_bytes against Tensor.copy_), and prefill chunks
with cached context (torch path, the one-row-per-query kernel, the tiled kernel), and the per-head attention
kernel with 4, 8 and 16 warps a block at small batches (WARPS_CASES, timed from CUDA graph replays). Times are
medians of CUDA-event-timed repeats after a warm-up. Run by bench/gpu.sh; usage: python bench/gpu_kernels.py OUT_PREFIX
(writes OUT_PREFIX.json, .txt and .png).
"""

from __future__ import annotations

import json
import math
import sys

import torch

from warmserve.engine.attention import AttnMeta, DecodeBatch, PagedMeta, attend
from warmserve.memory import kernels

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 256
DTYPE = torch.bfloat16
CASES = [(1, 512), (1, 4096), (1, 32768), (16, 512), (16, 4096), (16, 32768), (64, 512), (64, 4096)]


def timed(fn, repeats: int = 20) -> float:
    """Median milliseconds of fn() on the current stream."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def decode_case(batch: int, ctx: int) -> dict:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    nb = math.ceil(ctx / BLOCK)
    total = batch * nb + 1
    rpb = 2 * BLOCK  # one layer: K then V rows
    cache = torch.randn(total * rpb, KV_HEADS * HEAD_DIM, device=dev, dtype=DTYPE, generator=g)
    tables = torch.randperm(total - 1, device=dev, generator=g)[:batch * nb].view(batch, nb)
    q = torch.randn(batch, HEADS, HEAD_DIM, device=dev, dtype=DTYPE, generator=g)
    k = torch.randn(batch, KV_HEADS, HEAD_DIM, device=dev, dtype=DTYPE, generator=g)
    v = torch.randn_like(k)
    lens = torch.full((batch,), ctx, device=dev)
    ar = torch.arange(ctx, device=dev)
    rows = tables[:, ar // BLOCK] * rpb + ar % BLOCK
    wrows = tables[:, (ctx - 1) // BLOCK] * rpb + (ctx - 1) % BLOCK
    mask = (ar[None, :] < lens[:, None])[:, None, None, :]
    scale = HEAD_DIM ** -0.5
    torch_meta = AttnMeta(wrows, [], DecodeBatch(0, rows.reshape(-1), mask))
    paged = PagedMeta(torch.arange(batch, device=dev), tables.to(torch.int32),
                      torch.arange(batch, device=dev, dtype=torch.int32), lens.to(torch.int32), ctx, rpb, BLOCK, 0)
    kern_meta = AttnMeta(wrows, [], None, paged)
    t_torch = timed(lambda: attend(torch_meta, q, k, v, cache, 0, BLOCK, scale))
    t_kern = timed(lambda: attend(kern_meta, q, k, v, cache, 0, BLOCK, scale))
    err = (attend(kern_meta, q, k, v, cache, 0, BLOCK, scale).float()
           - attend(torch_meta, q, k, v, cache, 0, BLOCK, scale).float()).abs().max().item()
    kv_bytes = 2 * batch * ctx * KV_HEADS * HEAD_DIM * cache.element_size()
    out = dict(batch=batch, context=ctx, torch_ms=t_torch, kernel_ms=t_kern, speedup=t_torch / t_kern,
               kernel_kv_read_gbps=kv_bytes / t_kern / 1e6, max_abs_diff=err)
    # The attention call alone, per query head against GQA-shared (one block per KV head; not yet run on a GPU
    # when written, so a failure is recorded instead of raised).
    try:
        def att(gqa):
            return kernels.paged_attention(q, cache, paged.block_tables, paged.row_seq, paged.row_len, k_off=0,
                                           v_off=BLOCK, rows_per_block=rpb, block_tokens=BLOCK, scale=scale,
                                           max_len=ctx, gqa_shared=gqa)
        t_head, t_gqa = timed(lambda: att(False)), timed(lambda: att(True))
        out.update(attention_ms=t_head, gqa_shared_ms=t_gqa, gqa_shared_speedup=t_head / t_gqa,
                   gqa_shared_max_abs_diff=(att(True).float() - att(False).float()).abs().max().item())
    except Exception as e:  # noqa: BLE001
        out["gqa_shared_error"] = f"{type(e).__name__}: {e}"
    return out


#: Warps of the per-head kernel at small batches: (batch, context, head_dim); head_dim 64 is the 1b demo's shape
#: (32 / 8 heads), 128 the 7b's. A batch-1 decode at a short context is a chain of dependent rounds of keys, and
#: more warps put more keys in flight per round (bench/engine/README.md, the 1b's 8.4 us a layer).
WARPS_CASES = [(1, 70, 64), (1, 300, 64), (1, 2000, 64), (4, 300, 64), (1, 70, 128), (1, 2000, 128)]
#: The longest context a CUDA graph's split is fixed for in these cases (engine/graphs.py fixes it per bucket).
GRAPH_MAX_LEN = 8192


def graph_timed(fn, calls: int = 20, repeats: int = 10) -> float:
    """Median milliseconds per call of fn() replayed from a CUDA graph of `calls` calls: at a few microseconds a
    kernel, timing eager calls would time the host's launch and Python instead; a decode graph replays them."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # allocations and lazy loading outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return timed(graph.replay, repeats) / calls


def warps_case(batch: int, ctx: int, head_dim: int) -> dict:
    """Ms per call of paged_attention (per-head kernel, replayed from a graph) with 4, 8 and 16 warps, the split
    as an eager step picks it (max_len = the context) and as a graph fixes it (max_len = GRAPH_MAX_LEN); the
    largest difference from 4 warps' output."""
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(1)
    nb = math.ceil(ctx / BLOCK)
    rpb = 2 * BLOCK
    cache = torch.randn((batch * nb + 1) * rpb, KV_HEADS * head_dim, device=dev, dtype=DTYPE, generator=g)
    tables = torch.randperm(batch * nb, device=dev, generator=g).view(batch, nb).to(torch.int32)
    q = torch.randn(batch, HEADS, head_dim, device=dev, dtype=DTYPE, generator=g)
    seq = torch.arange(batch, device=dev, dtype=torch.int32)
    lens = torch.full((batch,), ctx, device=dev, dtype=torch.int32)
    out = dict(batch=batch, context=ctx, head_dim=head_dim)
    for label, max_len in (("eager", ctx), ("graph", GRAPH_MAX_LEN)):
        split = kernels.default_split_tokens(batch, HEADS, max_len)

        def att(w):
            return kernels.paged_attention(q, cache, tables, seq, lens, k_off=0, v_off=BLOCK, rows_per_block=rpb,
                                           block_tokens=BLOCK, scale=head_dim ** -0.5, max_len=max_len,
                                           split_tokens=split, gqa_shared=False, warps=w)
        ref = att(4).float()
        for w in (4, 8, 16):
            out[f"{label}_ms_w{w}"] = graph_timed(lambda: att(w))
            out[f"{label}_max_abs_diff_w{w}"] = (att(w).float() - ref).abs().max().item()
    return out


#: Prefill chunks with cached context: (query rows, cached tokens before them), one sequence.
PREFILL_CASES = [(512, 1536), (512, 7680), (2048, 2048)]


def prefill_case(n: int, cached: int) -> dict:
    """Attention of one chunk of n rows over cached + n keys (K/V already written): the torch path (gather the
    context, SDPA with a mask) against the one-row-per-query kernel (paged_attention, what the engine runs now)
    and the tiled kernel (prefill_attention)."""
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(1)
    ctx = cached + n
    nb = math.ceil(ctx / BLOCK)
    rpb = 2 * BLOCK
    cache = torch.randn((nb + 1) * rpb, KV_HEADS * HEAD_DIM, device=dev, dtype=DTYPE, generator=g)
    table = torch.randperm(nb + 1, device=dev, generator=g)[:nb]
    q = torch.randn(n, HEADS, HEAD_DIM, device=dev, dtype=DTYPE, generator=g)
    scale = HEAD_DIM ** -0.5
    ar = torch.arange(ctx, device=dev)
    rows = table[ar // BLOCK] * rpb + ar % BLOCK
    mask = ar[None, :] <= torch.arange(cached, ctx, device=dev)[:, None]
    bt = table.to(torch.int32)[None, :]
    row_seq = torch.zeros(n, dtype=torch.int32, device=dev)
    row_len = torch.arange(cached + 1, ctx + 1, dtype=torch.int32, device=dev)
    tiles = kernels.prefill_tiles([(0, n)], dev)
    kw = dict(k_off=0, v_off=BLOCK, rows_per_block=rpb, block_tokens=BLOCK, scale=scale)

    def torch_path():
        ks = cache.index_select(0, rows).view(ctx, KV_HEADS, HEAD_DIM).transpose(0, 1)[None]
        vs = cache.index_select(0, rows + BLOCK).view(ctx, KV_HEADS, HEAD_DIM).transpose(0, 1)[None]
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1)[None], ks, vs, attn_mask=mask,
                                                                scale=scale, enable_gqa=True)[0].transpose(0, 1)

    def rows_kernel():
        return kernels.paged_attention(q, cache, bt, row_seq, row_len, max_len=ctx, **kw)

    def tiled_kernel():
        return kernels.prefill_attention(q, cache, bt, row_seq, row_len, tiles, **kw)

    ref = torch_path().float()
    errs = {name: (fn().float() - ref).abs().max().item() for name, fn in (("rows", rows_kernel),
                                                                           ("tiled", tiled_kernel))}
    t_torch, t_rows, t_tiled = timed(torch_path), timed(rows_kernel), timed(tiled_kernel)
    return dict(rows=n, cached=cached, torch_ms=t_torch, rows_kernel_ms=t_rows, tiled_kernel_ms=t_tiled,
                tiled_vs_rows=t_rows / t_tiled, tiled_vs_torch=t_torch / t_tiled,
                max_abs_diff_rows=errs["rows"], max_abs_diff_tiled=errs["tiled"])


def copy_cases() -> list[dict]:
    dev = "cuda"
    n, block = 512, 2 << 20
    region = torch.empty(2 * n, block, dtype=torch.uint8, device=dev)
    src = torch.arange(n, 2 * n, device=dev)
    dst = torch.arange(0, n, device=dev)
    t_k = timed(lambda: kernels.copy_blocks(region, region, src, dst))
    t_t = timed(lambda: region.index_copy_(0, dst, region.index_select(0, src)))
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    t_kb = timed(lambda: kernels.copy_bytes(b, a))
    t_tb = timed(lambda: b.copy_(a))
    gib = float(n * block)
    return [dict(op="copy_blocks 512 x 2 MiB", kernel_ms=t_k, torch_ms=t_t, kernel_gbps=2 * gib / t_k / 1e6),
            dict(op="copy_bytes 1 GiB", kernel_ms=t_kb, torch_ms=t_tb, kernel_gbps=2 * gib / t_kb / 1e6)]


def main(prefix: str) -> None:
    if not kernels.kernels_available():
        sys.exit("the CUDA kernels are not available here (kernels_compiled="
                 f"{kernels.kernels_compiled()}, torch.cuda.is_available={torch.cuda.is_available()})")
    torch.backends.cuda.matmul.allow_tf32 = False
    decode = [decode_case(b, c) for b, c in CASES]
    copies = copy_cases()
    try:  # the wider per-head kernels had not run on a GPU when written: a failure is recorded, not raised
        warps, warps_error = [warps_case(*c) for c in WARPS_CASES], None
    except Exception as e:  # noqa: BLE001
        warps, warps_error = [], f"{type(e).__name__}: {e}"
    try:  # last: the tiled kernel is new, and a fault here must not cost the figures above
        prefill = [prefill_case(n, c) for n, c in PREFILL_CASES]
        prefill_error = None
    except Exception as e:
        prefill, prefill_error = [], f"{type(e).__name__}: {e}"
    res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, dtype=str(DTYPE), heads=HEADS,
               kv_heads=KV_HEADS, head_dim=HEAD_DIM, block_tokens=BLOCK, decode=decode, prefill=prefill,
               prefill_error=prefill_error, copies=copies,
               warps=warps, warps_error=warps_error,
               definitions="median ms of CUDA-event-timed calls of attend() (one layer: K/V write + attention); "
                           "kernel_kv_read_gbps = K+V bytes of the context / kernel time (bytes read, lower bound)")
    with open(prefix + ".json", "w") as f:
        json.dump(res, f, indent=1)
    lines = [f"{res['device']}, torch {res['torch']}, {DTYPE}, {HEADS}/{KV_HEADS} heads x {HEAD_DIM}",
             "batch context  torch_ms  kernel_ms  speedup  kernel_GB/s  max_abs_diff"]
    lines += [f"{d['batch']:5d} {d['context']:7d} {d['torch_ms']:9.3f} {d['kernel_ms']:10.3f} {d['speedup']:7.2f}x "
              f"{d['kernel_kv_read_gbps']:11.0f} {d['max_abs_diff']:12.2e}" for d in decode]
    lines += ["attention alone: batch context  per_head_ms  gqa_shared_ms  speedup  max_abs_diff"]
    lines += [f"{d['batch']:5d} {d['context']:7d} {d['attention_ms']:12.3f} {d['gqa_shared_ms']:14.3f} "
              f"{d['gqa_shared_speedup']:7.2f}x {d['gqa_shared_max_abs_diff']:12.2e}" if "gqa_shared_ms" in d
              else f"{d['batch']:5d} {d['context']:7d} GQA-shared FAILED: {d['gqa_shared_error']}" for d in decode]
    lines += ["per-head kernel by warps (ms; eager split | graph split, max_len 8192): batch context head_dim  "
              "w4 w8 w16 | w4 w8 w16"]
    lines += [f"{w['batch']:5d} {w['context']:7d} {w['head_dim']:8d}  "
              + " ".join(f"{w[f'eager_ms_w{n}']:.4f}" for n in (4, 8, 16)) + " | "
              + " ".join(f"{w[f'graph_ms_w{n}']:.4f}" for n in (4, 8, 16)) for w in warps]
    if warps_error:
        lines.append(f"warps cases FAILED: {warps_error}")
    lines += ["prefill chunk (one sequence): rows cached  torch_ms  rows_kernel_ms  tiled_kernel_ms  tiled_vs_rows  "
              "max_abs_diff_tiled"]
    lines += [f"{p['rows']:5d} {p['cached']:6d} {p['torch_ms']:9.3f} {p['rows_kernel_ms']:15.3f} "
              f"{p['tiled_kernel_ms']:16.3f} {p['tiled_vs_rows']:13.2f}x {p['max_abs_diff_tiled']:18.2e}"
              for p in prefill]
    if prefill_error:
        lines.append(f"prefill cases FAILED: {prefill_error}")
    lines += [f"{c['op']}: kernel {c['kernel_ms']:.3f} ms ({c['kernel_gbps']:.0f} GB/s read+write), torch "
              f"{c['torch_ms']:.3f} ms" for c in copies]
    text = "\n".join(lines)
    print(text)
    with open(prefix + ".txt", "w") as f:
        f.write(text + "\n")
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"B{d['batch']}\n{d['context']}" for d in decode]
    x = range(len(decode))
    ax.bar([i - 0.2 for i in x], [d["torch_ms"] for d in decode], 0.4, label="torch path (gather + SDPA)")
    ax.bar([i + 0.2 for i in x], [d["kernel_ms"] for d in decode], 0.4, label="paged kernels")
    ax.set_xticks(list(x), labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms per layer (decode step)")
    ax.set_title(f"decode attention, {res['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=120)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "kernels")
