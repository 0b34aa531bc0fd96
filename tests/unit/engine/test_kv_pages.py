"""KV blocks on pool pages larger than a block, or not a multiple of it (KVPageMapper), on real host slots."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.kv_cache import KVPageMapper
from warmserve.errors import OutOfMemoryError
from warmserve.memory import PagePool

MiB = 1 << 20


def _mapped_pages(slot) -> set[int]:
    return {p for start, n in slot.mapped_ranges() for p in range(start, start + n)}


def test_blocks_share_a_page_which_goes_back_with_the_last_of_them():
    with PagePool(64 * MiB, backend="host", page_bytes=8 * MiB, prefault=False) as pool:
        slot = pool.create_slot(64 * MiB, "kv")
        m = KVPageMapper(slot, 8 * MiB, 2 * MiB)  # 4 blocks to a page, after one page of "weights"
        m.map_block(0)
        assert _mapped_pages(slot) == {1} and m.pages_mapped == 1
        for b in (1, 2, 3):
            m.map_block(b)
        assert _mapped_pages(slot) == {1} and pool.free_pages == 7  # no map call for the page's other blocks
        m.map_block(4)
        assert _mapped_pages(slot) == {1, 2}
        for b in (0, 1, 2):
            m.unmap_block(b)
        assert _mapped_pages(slot) == {1, 2}  # block 3 still lies on page 1
        m.unmap_block(3)
        assert _mapped_pages(slot) == {2} and pool.free_pages == 7
        m.unmap_block(4)
        assert _mapped_pages(slot) == set() and pool.free_pages == 8


def test_a_block_across_two_pages_holds_both_and_a_neighbour_keeps_the_shared_one():
    with PagePool(64 * MiB, backend="host", page_bytes=8 * MiB, prefault=False) as pool:
        slot = pool.create_slot(64 * MiB, "kv")
        m = KVPageMapper(slot, 0, 6 * MiB)  # block 1 is bytes 6-12 MiB: pages 0 and 1
        assert list(m.pages_of(1)) == [0, 1]
        m.map_block(1)
        assert _mapped_pages(slot) == {0, 1}
        m.map_block(0)
        m.map_block(2)  # bytes 12-18 MiB: page 1 (shared) and page 2 (new)
        assert _mapped_pages(slot) == {0, 1, 2}
        m.unmap_block(1)
        assert _mapped_pages(slot) == {0, 1, 2}
        m.unmap_block(0)
        assert _mapped_pages(slot) == {1, 2}
        m.unmap_block(2)
        assert _mapped_pages(slot) == set()


def test_a_block_the_pool_cannot_hold_maps_nothing():
    with PagePool(16 * MiB, backend="host", page_bytes=8 * MiB, prefault=False) as pool:
        slot = pool.create_slot(64 * MiB, "kv")
        m = KVPageMapper(slot, 0, 6 * MiB)
        m.map_block(0)
        m.map_block(1)  # pages 0, 1: the pool is full
        with pytest.raises(OutOfMemoryError):
            m.map_block(2)  # needs page 2 as well as the shared page 1
        assert _mapped_pages(slot) == {0, 1} and m.pages_mapped == 2
        m.unmap_block(1)
        assert _mapped_pages(slot) == {0}  # the failed map left no count behind on page 1


@settings(max_examples=60, deadline=None)
@given(block_units=st.sampled_from([1, 2, 3, 4, 5, 8]), page_units=st.sampled_from([1, 2, 4, 8]),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 15)), max_size=40))
def test_mapped_pages_are_exactly_those_under_mapped_blocks(block_units, page_units, ops):
    """Any order of map and unmap: the slot maps exactly the pages under mapped blocks, the pool counts them, and
    `mappable(blocks)` says exactly how many of the blocks fit, in order."""
    block, page = block_units * 2 * MiB, page_units * 2 * MiB
    total_pages = 48 // page_units
    with PagePool(total_pages * page, backend="host", page_bytes=page, prefault=False) as pool:
        slot = pool.create_slot(16 * block + 2 * page, "kv")
        m = KVPageMapper(slot, page, block)
        mapped: set[int] = set()
        for want, b in ops:
            if want and b not in mapped:
                try:
                    m.map_block(b)
                    mapped.add(b)
                except OutOfMemoryError:
                    pass
            elif not want and b in mapped:
                m.unmap_block(b)
                mapped.discard(b)
            under = {p for x in mapped for p in m.pages_of(x)}
            assert _mapped_pages(slot) == under and m.pages_mapped == len(under)
            assert pool.free_pages == total_pages - len(under)
        rest = [b for b in range(16) if b not in mapped]
        k = m.mappable(rest)
        for b in rest[:k]:
            m.map_block(b)
        if k < len(rest):  # exact: the next one does not fit
            with pytest.raises(OutOfMemoryError):
                m.map_block(rest[k])


def _prompts(n, length, vocab=512):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (length + 7 * i,), generator=g).tolist() for i in range(n)]


@pytest.mark.parametrize("page_mib", [8, 6])
def test_an_engine_on_larger_pages_generates_the_same_tokens_and_gives_every_kv_page_back(tiny_dir, pool, page_mib):
    """tiny-linear's 2 MiB blocks, four (or three) to a page: the same greedy tokens as on the 2 MiB pool, and a
    KV target of 0 after the requests leaves only the weights mapped."""
    prompts, params = _prompts(5, 300), SamplingParams(max_tokens=30, ignore_eos=True)
    ref = load_model(tiny_dir["tiny-linear"], pool).wait()
    try:
        with Engine(ref) as eng:
            want = eng.generate(prompts, params)
    finally:
        ref.close()
    with PagePool(96 * MiB, backend="host", page_bytes=page_mib * MiB, prefault=False) as big:
        lm = load_model(tiny_dir["tiny-linear"], big).wait()
        try:
            assert lm.kv_bytes_per_block == 2 * MiB and lm.weight_region_bytes % big.page_bytes == 0
            weight_pages = lm.weight_region_bytes // big.page_bytes
            with Engine(lm, target_free_blocks=3) as eng:
                got = eng.generate(prompts, params)
                st_ = eng.kv_stats()
                kv_pages = lm.slot.mapped_pages - weight_pages
                assert kv_pages == eng.kv.mapper.pages_mapped == -(-st_.kv_blocks_mapped * 2 // page_mib)
                eng.set_kv_target_free_blocks(0)
                assert lm.slot.mapped_pages == weight_pages and eng.kv.mapper.pages_mapped == 0
                assert big.free_pages == big.total_pages - weight_pages
        finally:
            lm.close()
    assert got == want and all(len(t) == 30 for t in want)


def test_shrinking_gives_back_the_page_no_block_in_use_holds():
    """Blocks 4 and 5 in use on page 1, blocks 0-3 (page 0) and 6-7 free, a KV target of 2: unmapping the highest
    free blocks (2, 3, 6, 7) would give no page back; the cache unmaps 0-3 and page 0 goes back."""
    from warmserve.engine import ModelConfig
    from warmserve.engine.demo import DemoSpec, config_dict
    from warmserve.engine.kv_cache import KVCache

    cfg = ModelConfig.from_dict(config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=512)))
    with PagePool(64 * MiB, backend="host", page_bytes=8 * MiB, prefault=False) as pool:
        slot = pool.create_slot(64 * MiB, "kv")
        region = slot.tensor(0, (8, (2 * MiB) // 4), torch.float32, pinned=False)
        kv = KVCache(cfg, region, 8, 256, KVPageMapper(slot, 0, 2 * MiB), target_free_blocks=0)
        got = [kv.allocate() for _ in range(8)]
        assert got == list(range(8)) and _mapped_pages(slot) == {0, 1}
        kv.free([0, 1, 2, 3, 6, 7])
        kv.set_target_free_blocks(2)
        assert _mapped_pages(slot) == {1} and pool.free_pages == 7
        assert kv.num_free_mapped == 2 and kv.num_used == 2
        del region


def test_compaction_moves_a_long_sequence_onto_few_pages_and_keeps_its_tokens(tiny_dir, pool):
    """Four sequences decoding side by side interleave their 2 MiB blocks over 8 MiB pages; when three finish,
    the long one holds a block on each page. Compaction moves its blocks together (copying their K/V), the pages
    go back, and its tokens are those of a run on 2 MiB pages."""
    # Sizes (found when the suite was timed: 19 s, the slowest engine test): the short ones end in their second
    # 256-token block, so the long one holds blocks on two pages when they finish (seen: blocks [0, 7] on pages
    # {1, 2}, then [0, 1] on page 1); the long one ends in its fifth block, so after compaction it still grows
    # onto a second page. The reference is the same four requests side by side on 2 MiB pages, the same batches
    # step for step (before: each alone, 1,100 + 3 x 700 steps; 700-token short ones, 1,100-token long one).
    prompts = _prompts(4, 8)
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (1040, 300, 300, 300)]
    assert -(-(len(prompts[0]) + 1040) // 256) == 5 and all(-(-(len(p) + 300) // 256) == 2 for p in prompts[1:])
    ref = load_model(tiny_dir["tiny-linear"], pool).wait()
    try:
        with Engine(ref) as eng:
            want = _run_side_by_side(eng, prompts, params)
    finally:
        ref.close()
    with PagePool(96 * MiB, backend="host", page_bytes=8 * MiB, prefault=False) as big:
        lm = load_model(tiny_dir["tiny-linear"], big).wait()
        try:
            with Engine(lm, target_free_blocks=0) as eng:
                spread = interleaved = 0

                def check(eng):
                    nonlocal spread, interleaved
                    running = eng.scheduler.running
                    if len(running) == 4:  # the long one's blocks before the short ones end: on two pages
                        blocks = next(s.blocks for s in running if s.request_id == "0")
                        interleaved = max(interleaved, len({eng.kv.mapper.pages_of(b)[0] for b in blocks}))
                    long = running[0].blocks if len(running) == 1 else None
                    if long is not None:
                        pages = {eng.kv.mapper.pages_of(b)[0] for b in long}
                        spread = max(spread, len(pages))
                        assert eng.kv.mapper.pages_mapped == len(pages) == -(-len(long) // 4), (long, pages)

                got = _run_side_by_side(eng, prompts, params, check)
                assert interleaved == 2 and spread == 2 and eng.kv.mapper.pages_mapped == 0
        finally:
            lm.close()
    assert got == want


def _run_side_by_side(eng, prompts, params, after_step=None) -> list[list[int]]:
    """Each request's output ids, all added at once and stepped to the end; after_step(eng) after each step."""
    for i, (p, q) in enumerate(zip(prompts, params)):
        eng.add_request(str(i), p, q)
    got = {}
    while eng.has_unfinished():
        for o in eng.step():
            got.setdefault(o.request_id, []).extend(o.token_ids)
        if after_step is not None:
            after_step(eng)
    return [got[str(i)] for i in range(len(prompts))]


def test_compaction_packs_the_free_blocks_the_target_keeps_too():
    """Four 2 MiB blocks to an 8 MiB page, a free target of 3: block 4 (page 1) in use, blocks 0-2 (page 0)
    free. One page holds them all: compaction copies block 4 into page 0's room and gives page 1 back (the
    free blocks kept page 0 mapped, and shrinking alone has nothing beyond the target to unmap)."""
    from warmserve.engine import ModelConfig
    from warmserve.engine.demo import DemoSpec, config_dict
    from warmserve.engine.kv_cache import KVCache

    cfg = ModelConfig.from_dict(config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=512)))
    with PagePool(64 * MiB, backend="host", page_bytes=8 * MiB, prefault=False) as pool:
        slot = pool.create_slot(64 * MiB, "kv")
        region = slot.tensor(0, (16, (2 * MiB) // 4), torch.float32, pinned=False)
        kv = KVCache(cfg, region, 16, 256, KVPageMapper(slot, 0, 2 * MiB), target_free_blocks=3)

        def step():  # the tail of Engine.step
            kv.shrink()
            moved = kv.compact(16)
            kv.grow()
            return moved

        step()
        x = [kv.allocate()]
        step()
        y = [kv.allocate() for _ in range(3)]
        step()
        seq = [kv.allocate()]
        step()
        region.view(16, -1)[seq[0]] = 7.0  # what the sequence wrote
        kv.free(y)
        step()
        kv.free(x)
        moved = {}
        for _ in range(3):
            moved.update(step())
        assert set(moved) == {4} and kv.mapper.pages_mapped == 1 == -(-(kv.num_used + 3) // 4)
        assert kv.num_used == 1 and kv.num_free_mapped == 3 and pool.free_pages == 7
        assert bool((region.view(16, -1)[moved[4]] == 7.0).all())  # the K/V came along
        kv.free([moved[4]])
        kv.set_target_free_blocks(0)
        assert kv.mapper.pages_mapped == 0
        del region
