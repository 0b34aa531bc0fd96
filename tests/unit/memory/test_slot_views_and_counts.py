"""Slot.tensors over a layout whose first tensor starts off the wider items' alignment (a uint8 at byte 1 beside a
float32 at 4 raised: the shared view's start was not a multiple of 4), and Slot.load_bytes, the per-slot count of
what loads wrote (a worker's Activated.copied_bytes compares it, not the pool-wide counter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

PAGE = 4096


@pytest.mark.parametrize("layout", [
    {"a": (1, (1,), torch.uint8), "b": (4, (2,), torch.float32)},
    {"a": (2, (1,), torch.float16), "b": (8, (2,), torch.float32), "c": (16, (3,), torch.float64)},
    {"a": (PAGE + 3, (5,), torch.uint8), "b": (PAGE + 8, (2,), torch.int64)},
    {"a": (0, (1,), torch.uint8), "b": (4, (2,), torch.float32)},
], ids=["u8-at-1", "f16-at-2", "second-page", "aligned"])
def test_views_of_a_layout_starting_off_alignment_match_single_views(pool, layout):
    s = pool.create_slot(4 * PAGE, "x")
    s.map(0, 2)
    s.tensor(0, (2 * PAGE,), torch.uint8).copy_(torch.arange(2 * PAGE) % 251)
    out = s.tensors(layout)
    for name, (off, shape, dtype) in layout.items():
        ref = s.tensor(off, shape, dtype)
        assert out[name].dtype == dtype and out[name].shape == shape
        assert torch.equal(out[name], ref), name
        assert out[name].data_ptr() == ref.data_ptr()  # a view of the same bytes, not a copy
    first = min(layout.values(), key=lambda v: v[0])
    out[next(n for n, v in layout.items() if v is first)].fill_(7)
    assert (s.tensor(first[0], first[1], first[2]) == 7).all()
    out = ref = None
    s.close()


def test_load_bytes_counts_the_slots_own_loads(pool, tmp_path):
    path = str(tmp_path / "f.bin")
    np.arange(3 * PAGE, dtype=np.uint8).tofile(path)
    a, b = pool.create_slot(8 * PAGE, "a"), pool.create_slot(8 * PAGE, "b")
    assert a.load_bytes == 0
    a.load([(path, 0, 0, 2 * PAGE), (b"x" * 100, 0, 2 * PAGE, 100)]).wait()
    b.load([(path, 0, 0, PAGE)]).wait()
    assert (a.load_bytes, b.load_bytes) == (2 * PAGE + 100, PAGE)
    with HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=1 << 20,
                                             chunk_bytes=PAGE)) as cache:
        for _ in range(2):  # a fill, then a hit
            cache.load(b, [(path, 0, 4 * PAGE, 3 * PAGE)]).wait()
    assert (a.load_bytes, b.load_bytes) == (2 * PAGE + 100, 7 * PAGE)
    a.close()
    b.close()
