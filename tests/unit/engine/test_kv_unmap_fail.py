"""A KV unmap that fails part way (the host backend's PROT_NONE refused, by the pool's fault injection) leaves every
block on the list its pages say: no unmapped block on the free list, where the next sequence would be given it
and write through PROT_NONE (SIGSEGV)."""

from __future__ import annotations

import pytest
import torch

from warmserve import _C
from warmserve.engine import ModelConfig
from warmserve.engine.demo import DemoSpec, config_dict
from warmserve.engine.kv_cache import KVCache, KVPageMapper
from warmserve.errors import WarmServeError
from warmserve.memory import PagePool

MiB = 1 << 20
BLOCK = 2 * MiB
CFG = ModelConfig.from_dict(config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=512)))


@pytest.fixture
def fail_unmap():
    """fail_unmap(k): the k-th unmap from now fails (k=1: the next one)."""
    yield lambda k: _C._debug_fail_after("protect_hard", k)
    _C._debug_fail_after("protect_hard", 0)


def _cache(pool, blocks: int, target: int):
    slot = pool.create_slot(blocks * BLOCK, "kv")
    region = slot.tensor(0, (blocks, BLOCK // 4), torch.float32, pinned=False)
    return slot, region, KVCache(CFG, region, blocks, 256, KVPageMapper(slot, 0, BLOCK), target_free_blocks=target)


def _freed_cache(pool, used: int, fail_unmap, k: int):
    """A 16-block cache that handed out ``used`` blocks and took them back, its k-th unmap from now set to fail."""
    slot, region, kv = _cache(pool, 16, target=16)
    got = [kv.allocate() for _ in range(used)]
    kv.free(got)
    fail_unmap(k)
    return slot, region, kv


def _assert_consistent(kv: KVCache, slot) -> None:
    free, unmapped = set(kv._free), set(kv._unmapped)
    assert not free & unmapped, f"blocks both free-mapped and unmapped: {sorted(free & unmapped)}"
    assert len(kv._free) == len(free) and len(kv._unmapped) == len(unmapped), "a block listed twice"
    for b in range(kv.total_blocks):
        assert kv.mapped[b] == (b not in unmapped), f"block {b}: mapped={kv.mapped[b]}, unmapped list {b in unmapped}"
        if b in free or kv.mapped[b]:
            pages = kv.mapper.pages_of(b)
            assert slot.is_mapped(pages.start, len(pages)), f"block {b} is on the free list with no pages under it"
    assert kv.num_mapped == len(free) + kv.num_used


def _write_every_free_block(kv: KVCache, region) -> None:
    """What the next sequences do with the blocks they are given (an unmapped one: SIGSEGV)."""
    got = [kv.allocate() for _ in range(kv.num_free_mapped)]
    for b in got:
        region[b] = 1.0
    kv.free(got)


@pytest.mark.parametrize("page_mib", [2, 8])
def test_a_shrink_whose_second_unmap_fails_keeps_the_first_off_the_free_list(page_mib, fail_unmap):
    with PagePool(64 * MiB, backend="host", page_bytes=page_mib * MiB, prefault=False) as pool:
        slot, region, kv = _cache(pool, 16, target=16)
        got = [kv.allocate() for _ in range(12)]
        kv.free(got)
        fail_unmap(2)
        with pytest.raises(WarmServeError):
            kv.set_target_free_blocks(0)
        _assert_consistent(kv, slot)
        assert kv.num_mapped < 12, "the first unmap went through"
        _write_every_free_block(kv, region)
        kv.set_target_free_blocks(0)  # the unmap works again: the rest go
        assert kv.num_mapped == 0 and pool.free_pages == pool.total_pages
        del region


def test_unmap_free_that_fails_part_way_keeps_the_lists_true(fail_unmap):
    with PagePool(64 * MiB, backend="host", page_bytes=2 * MiB, prefault=False) as pool:
        slot, region, kv = _freed_cache(pool, 8, fail_unmap, 3)
        with pytest.raises(WarmServeError):
            kv.unmap_free([4, 5, 6, 7])
        _assert_consistent(kv, slot)
        assert kv.num_mapped == 6
        _write_every_free_block(kv, region)
        del region


def test_release_all_that_fails_part_way_keeps_the_lists_true(fail_unmap):
    with PagePool(64 * MiB, backend="host", page_bytes=2 * MiB, prefault=False) as pool:
        slot, region, kv = _freed_cache(pool, 6, fail_unmap, 4)
        with pytest.raises(WarmServeError):
            kv.release_all()
        _assert_consistent(kv, slot)
        assert kv.num_mapped == 3
        kv.release_all()
        assert kv.num_mapped == 0 and pool.free_pages == pool.total_pages
        del region


def test_a_compaction_whose_unmap_fails_still_hands_over_the_moved_blocks(fail_unmap):
    """8 MiB pages of four blocks: page 0 holds block 0 (in use, written 7.0) and 1 (free), the other pages have
    one empty place each (7, 11). Compaction copies 0 to 11 and maps 7 for the free block 1, then lets go of 0
    (page 0 still holds 1: no unmap) and of 1, whose unmap of page 0 fails. The copy has landed: the sequence
    must still take the new id (compaction returns it), and block 1 stays a mapped free block."""
    with PagePool(64 * MiB, backend="host", page_bytes=8 * MiB, prefault=False) as pool:
        slot, region, kv = _cache(pool, 16, target=2)
        assert [kv.allocate() for _ in range(11)] == list(range(11))
        region[0] = 7.0
        kv.free([1, 2, 3, 6, 7])
        kv.unmap_free([2, 3, 7])
        fail_unmap(1)
        moved = kv.compact(16)
        assert moved == {0: 11}, moved
        _assert_consistent(kv, slot)
        assert bool((region[11] == 7.0).all()), "the K/V came along"
        assert not kv.mapped[0] and kv.mapped[1] and kv.mapped[7] and {1, 7} <= set(kv._free)
        assert kv.num_used == 6 and kv.mapper.pages_mapped == 3
        kv.free([11])
        _write_every_free_block(kv, region)
        del region
