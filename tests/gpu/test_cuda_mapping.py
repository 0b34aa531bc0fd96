"""The cuda backend's mapping on a real GPU (issue 13): pages carved from 1 GiB allocations where the driver maps
from inside one (else one allocation per page), one cuMemMap per run of adjacent pages, a partial unmap that cuts
a run maps the rest again with its contents, and the cost of a 1 GiB move and a 1 GiB give-back (goal: <= 5 ms
each on an H100; printed, asserted only loosely)."""

import time

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs an NVIDIA GPU", allow_module_level=True)

from warmserve.memory import PAGE_BYTES, PagePool, cuda_compiled  # noqa: E402

pytestmark = pytest.mark.gpu
if not cuda_compiled():
    pytest.skip("this build has no cuda backend (cuda.h was not found at build time)", allow_module_level=True)


def fill(slot, page, n, value):
    slot.tensor(page * PAGE_BYTES, (n * PAGE_BYTES,), torch.uint8, pinned=False).fill_(value)


def page_value(slot, page):
    v = slot.tensor(page * PAGE_BYTES, (PAGE_BYTES,), torch.uint8, pinned=False)
    lo, hi = int(v.min()), int(v.max())
    return lo if lo == hi else None


def test_run_mapping_and_cut_keep_contents():
    with PagePool(32 * PAGE_BYTES, backend="cuda") as pool:
        s = pool.create_slot(16 * PAGE_BYTES, "s")
        c0 = pool.stats()["backend_calls"]
        s.map(0, 8)
        # One cuMemMap per run inside one allocation (one per page where the driver allows no offset), then one
        # cuMemSetAccess over the whole range.
        maps = 1 if pool.stats()["pages_per_allocation"] >= 8 else 8
        assert pool.stats()["backend_calls"] - c0 == maps + 1
        for i in range(8):
            fill(s, i, 1, i + 1)
        torch.cuda.synchronize()
        s.unmap(3, 2)
        assert s.mapped_ranges() == [(0, 3), (5, 3)]
        assert [page_value(s, i) for i in (0, 1, 2, 5, 6, 7)] == [1, 2, 3, 6, 7, 8]
        t = pool.create_slot(16 * PAGE_BYTES, "t")
        s.map(3, 2)
        fill(s, 3, 2, 9)
        torch.cuda.synchronize()
        s.move_pages(0, 8, t, 4)
        assert [page_value(t, 4 + i) for i in range(8)] == [1, 2, 3, 9, 9, 6, 7, 8]
        torch.cuda.synchronize()


def test_move_and_give_back_1gib_timing():
    n = (1 << 30) // PAGE_BYTES
    with PagePool(2 * n * PAGE_BYTES, backend="cuda") as pool:
        a = pool.create_slot(n * PAGE_BYTES, "a")
        b = pool.create_slot(n * PAGE_BYTES, "b")
        a.map(0, n)
        torch.cuda.synchronize()
        moves, gives = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            a.move_pages(0, n, b, 0)
            moves.append(time.perf_counter() - t0)
            b.move_pages(0, n, a, 0)
        for _ in range(3):
            t0 = time.perf_counter()
            a.unmap(0, n)
            gives.append(time.perf_counter() - t0)
            a.map(0, n)
        move_ms, give_ms = 1e3 * min(moves), 1e3 * min(gives)
        print(f"1 GiB move {move_ms:.2f} ms, 1 GiB give-back (unmap) {give_ms:.2f} ms "
              f"({torch.cuda.get_device_name(0)}; goal <= 5 ms each)")
        assert move_ms < 100 and give_ms < 100  # a sanity bound; the goal is reported, not asserted
