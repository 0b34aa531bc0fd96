"""Part ``kv`` of ``warmserve bench switch``: KV give-back and growth per GiB through the engine's own KV cache.

Issue 13 asks for a 1 GiB KV give-back in <= 5 ms on a GPU. The driver's cost is per mapping call, so it depends on
the pool's page size (8.4 ms per GiB at 2 MiB pages, 0.48 ms at 32 MiB on an H200, part ``move``). The KV block
stays a whole number of 2 MiB units whatever the page (8 MiB for the 1b demo, 32 MiB for the 7b), so with larger
pages several blocks share one (``engine.kv_cache.KVPageMapper``). This part times that real path: an
``engine.kv_cache.KVCache`` over a slot grows by 1 GiB of blocks (``grow``) and gives them back
(``set_target_free_blocks(0)``), for each demo block size at each page size of ``--page-mib``.
"""

from __future__ import annotations

from warmserve.bench.self_check import check
from warmserve.errors import GiB, InvalidArgumentError
from warmserve.geometry import is_page_size

MiB = 1 << 20


def page_sizes(arg: str) -> list[int]:
    """--page-mib as bytes, with the 2 MiB unit always first (the reference); InvalidArgumentError naming the flag
    for anything but page sizes that divide 1 GiB: powers of two from 2 to 1024 MiB (found in review: "abc" was
    int()'s ValueError naming no flag; 6 or 2048, whole multiples of 2 MiB, passed and failed mid-run after the
    2 MiB measurement, --json never written, and 768 timed 768 MiB as its "per GiB")."""
    bad = InvalidArgumentError(f"--page-mib {arg}: page sizes must be multiples of 2 MiB that divide 1 GiB (the move "
                               f"and kv parts time 1 GiB of whole pages): powers of two from 2 to 1024, e.g. 8,32",
                               flag="--page-mib", value=arg)
    try:
        sizes = sorted({int(x) for x in str(arg).split(",") if x.strip()} | {2})
    except ValueError:
        raise bad from None
    if not all(is_page_size(m * MiB) and m <= GiB // MiB and GiB % (m * MiB) == 0 for m in sizes):
        raise bad
    return [m * MiB for m in sizes]


def kv_give_back(args, dev, timed, med_ms) -> dict:
    """{size: {"block_bytes", "by_page_bytes": {page: {"grow_ms", "give_back_ms", "map_ops", "unmap_ops",
    "backend_calls"}}}}: ms
    per GiB of KV, medians of --repeats; ops per grow and per give-back (timed and med_ms are switch.py's, so every
    part times alike)."""
    import torch

    from warmserve.engine.config import ModelConfig
    from warmserve.engine.demo import SIZED_DTYPE, SIZED_MODELS, config_dict
    from warmserve.engine.kv_cache import block_layout

    out = {}
    for size, (name, spec) in SIZED_MODELS.items():
        cfg = ModelConfig.from_dict(config_dict(spec, SIZED_DTYPE))
        _, block = block_layout(cfg, getattr(torch, SIZED_DTYPE))
        out[size] = {"model": name, "block_bytes": block,
                     "by_page_bytes": {str(p): _one(args, dev, timed, med_ms, cfg, block, p)
                                       for p in page_sizes(args.page_mib)}}
    return out


def _one(args, dev, timed, med_ms, cfg, block: int, page: int) -> dict:
    import torch

    from warmserve.engine.demo import SIZED_DTYPE
    from warmserve.engine.kv_cache import KVCache, KVPageMapper
    from warmserve.memory import PagePool

    n = GiB // block
    with PagePool(GiB + 2 * page, backend=args.backend, device=args.device, page_bytes=page) as pool:
        slot = pool.create_slot(GiB + 2 * page, "kv")
        elems = block // torch.empty((), dtype=getattr(torch, SIZED_DTYPE)).element_size()
        region = slot.tensor(page, (n, elems), getattr(torch, SIZED_DTYPE), pinned=False)
        kv = KVCache(cfg, region, n, 256, KVPageMapper(slot, page, block), target_free_blocks=0)
        before = pool.stats()

        def grow():
            kv.target_free_blocks = n  # set directly: set_target_free_blocks would only shrink
            grown = kv.grow(n)
            check(grown == n, f"the KV grow mapped {grown} of {n} blocks")

        def give_back():
            kv.set_target_free_blocks(0)

        grows, gives = [], []
        for _ in range(args.repeats):
            grows += timed(grow, 1, dev)
            check(slot.mapped_pages == -(-n * block // page), f"{slot.mapped_pages} pages mapped after the grow, "
                  f"not {-(-n * block // page)}")
            gives += timed(give_back, 1, dev)
            check(slot.mapped_pages == 0 and kv.num_mapped == 0, f"{slot.mapped_pages} pages still mapped after the "
                  "give-back")
        after = pool.stats()
        del region
        slot.close()
    scale = GiB / (n * block)  # per GiB (n blocks are at most 1 GiB)
    return {"grow_ms": med_ms(grows) * scale, "give_back_ms": med_ms(gives) * scale,
            "map_ops": (after["map_ops"] - before["map_ops"]) // args.repeats,
            "unmap_ops": (after["unmap_ops"] - before["unmap_ops"]) // args.repeats,
            # system or driver calls (cuda: one allocation per page, so a call or two per page mapped)
            "backend_calls": (after["backend_calls"] - before["backend_calls"]) // args.repeats}
