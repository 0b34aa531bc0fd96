import pytest
import torch

from warmserve.errors import ClosedError, InvalidArgumentError, OutOfMemoryError
from warmserve.memory import PAGE_BYTES, PagePool

SMALL_PAGE = 4096  # the pool fixture (conftest.py) uses pages of this size


def fill(slot, page, value):
    slot.tensor(page * slot.page_bytes, (slot.page_bytes,), torch.uint8)[:] = value


def page_values(slot, page, n=1):
    t = slot.tensor(page * slot.page_bytes, (n, slot.page_bytes), torch.uint8)
    return [int(v) for v in t[:, 0]]


def test_pool_accounting_defaults():
    with PagePool(8 * PAGE_BYTES) as p:
        assert p.backend == "host" and p.page_bytes == PAGE_BYTES == 2 << 20
        assert p.total_pages == p.free_pages == 8 and p.total_bytes == p.free_bytes == 16 << 20
        st = p.stats()
        assert isinstance(st["huge_pages"], bool) and st["bytes_loaded"] == 0 and st["free_pages"] == 8
        assert p.pages_by_tag() == {"free": 8}
        s = p.create_slot(5 * PAGE_BYTES + 1, "llama")
        assert s.reserved_pages == 6 and s.reserved_bytes == 6 * PAGE_BYTES
        assert s.mapped_pages == 0 and p.free_pages == 8  # a reservation maps nothing
        assert s.base_address % PAGE_BYTES == 0 or not p.huge_pages


def test_map_unmap_and_tags(pool):
    a = pool.create_slot(10 * SMALL_PAGE, "a")
    b = pool.create_slot(10 * SMALL_PAGE, "b")
    a.map(2, 3)
    b.map(0, 1)
    assert a.mapped_pages == 3 and a.mapped_bytes == 3 * SMALL_PAGE
    assert pool.pages_by_tag() == {"a": 3, "b": 1, "free": 60}
    assert a.is_mapped(2, 3) and not a.is_mapped(1, 2) and not a.is_mapped(0)
    assert a.mapped_ranges() == [(2, 3)]
    a.unmap(3, 1)
    assert a.mapped_ranges() == [(2, 1), (4, 1)] and pool.free_pages == 61
    a.tag = "a-running"
    assert pool.pages_by_tag() == {"a-running": 2, "b": 1, "free": 61}
    st = pool.stats()
    assert st["map_ops"] == 2 and st["unmap_ops"] == 1 and st["pages_mapped"] == 4


def test_adjacent_pages_get_adjacent_pool_pages(pool):
    s = pool.create_slot(16 * SMALL_PAGE, "s")
    s.map(0, 4)
    s.map(4, 4)  # continues the run: one kernel mapping
    assert s.physical_pages(0, 8) == list(range(8))
    assert s.physical_pages(8, 2) == [-1, -1]


def test_contents_survive_and_pages_are_shared_memory(pool):
    s = pool.create_slot(8 * SMALL_PAGE, "s")
    s.map(0, 4)
    for i in range(4):
        fill(s, i, 10 + i)
    assert page_values(s, 0, 4) == [10, 11, 12, 13]


def test_grow_and_shrink(pool):
    s = pool.create_slot(8 * SMALL_PAGE, "s")
    assert s.grow(2) == 0
    fill(s, 1, 5)
    assert s.grow(3) == 2 and s.mapped_ranges() == [(0, 5)]
    s.unmap(0, 1)
    assert s.grow(1) == 5 and s.mapped_ranges() == [(1, 5)]
    s.shrink(2)
    assert s.mapped_ranges() == [(1, 3)] and page_values(s, 1) == [5]
    with pytest.raises(InvalidArgumentError, match="has 3 mapped pages"):
        s.shrink(4)
    with pytest.raises(InvalidArgumentError, match="outside"):
        s.grow(5)  # 4 + 5 > 8 reserved


def test_move_pages_keeps_contents_without_copy(pool):
    src = pool.create_slot(8 * SMALL_PAGE, "prewarm")
    dst = pool.create_slot(16 * SMALL_PAGE, "instance")
    src.map(0, 4)
    for i in range(4):
        fill(src, i, 100 + i)
    ids = src.physical_pages(1, 3)
    before = pool.stats()["backend_calls"]
    src.move_pages(1, 3, dst, 10)
    assert dst.physical_pages(10, 3) == ids  # the same physical pages
    assert page_values(dst, 10, 3) == [101, 102, 103]
    assert src.mapped_ranges() == [(0, 1)] and dst.mapped_ranges() == [(10, 3)]
    assert pool.pages_by_tag() == {"prewarm": 1, "instance": 3, "free": 60}
    assert pool.stats()["backend_calls"] - before == 2  # one map of the run, one unmap: no per-page work
    src.move_pages(0, 1, src, 5)  # within one slot
    assert page_values(src, 5) == [100]


def test_move_errors_leave_state_unchanged(pool):
    a = pool.create_slot(8 * SMALL_PAGE, "a")
    b = pool.create_slot(8 * SMALL_PAGE, "b")
    a.map(0, 2)
    b.map(1, 1)
    with pytest.raises(InvalidArgumentError, match="already mapped"):
        a.move_pages(0, 2, b, 0)
    with pytest.raises(InvalidArgumentError, match="not mapped"):
        a.move_pages(1, 2, b, 4)
    with pytest.raises(InvalidArgumentError, match="outside"):
        a.move_pages(0, 2, b, 7)
    with PagePool(4 * SMALL_PAGE, page_bytes=SMALL_PAGE) as other:
        c = other.create_slot(4 * SMALL_PAGE, "c")
        with pytest.raises(InvalidArgumentError, match="another pool"):
            a.move_pages(0, 1, c, 0)
    assert a.mapped_ranges() == [(0, 2)] and b.mapped_ranges() == [(1, 1)]
    assert pool.free_pages == 61


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: s.map(-1, 1), "non-negative"),
        (lambda s: s.map(0, 0), "positive"),
        (lambda s: s.map(7, 2), "outside"),
        (lambda s: s.map(1.0, 1), "int"),
        (lambda s: s.unmap(0, 1), "not mapped"),
        (lambda s: s.is_mapped(8), "outside"),
        (lambda s: s.physical_pages(0, 9), "outside"),
        (lambda s: s.tensor(8 * SMALL_PAGE - 4, (2,), torch.float32), "outside"),
        (lambda s: s.tensor(2, (2,), torch.float32), "multiple"),
        (lambda s: s.tensor(0, (4,), torch.uint8), "needs its pages mapped"),
    ],
)
def test_bad_arguments(pool, call, match):
    s = pool.create_slot(8 * SMALL_PAGE, "s")
    with pytest.raises(InvalidArgumentError, match=match):
        call(s)
    assert isinstance(InvalidArgumentError("x"), ValueError)


def test_overlap_and_double_unmap(pool):
    s = pool.create_slot(8 * SMALL_PAGE, "s")
    s.map(2, 2)
    with pytest.raises(InvalidArgumentError, match="overlaps page 3"):
        s.map(3, 2)
    s.unmap(2, 2)
    with pytest.raises(InvalidArgumentError, match="double unmap"):
        s.unmap(2, 1)
    assert pool.free_pages == pool.total_pages


def test_pool_arguments():
    with pytest.raises(InvalidArgumentError, match="multiple of the system page"):
        PagePool(1 << 20, page_bytes=1000)
    with pytest.raises(InvalidArgumentError, match="multiple of page_bytes"):
        PagePool(3 * SMALL_PAGE + 1, page_bytes=SMALL_PAGE)
    with pytest.raises(InvalidArgumentError, match="backend"):
        PagePool(1 << 20, backend="tpu")
    with pytest.raises(InvalidArgumentError, match="positive"):
        PagePool(0)


def test_exhaustion_error_has_numbers_and_fix(pool):
    s = pool.create_slot(100 * SMALL_PAGE, "big")
    s.map(0, 60)
    with pytest.raises(OutOfMemoryError) as ei:
        s.map(60, 5)
    e = ei.value
    assert (e.asked_bytes, e.free_bytes, e.total_bytes) == (5 * SMALL_PAGE, 4 * SMALL_PAGE, 64 * SMALL_PAGE)
    assert "Fix" in str(e) and "capacity_bytes" in str(e)
    assert s.mapped_pages == 60 and pool.free_pages == 4  # nothing half-done
    s.map(60, 4)
    assert pool.free_pages == 0


def test_pool_too_big_for_host_is_out_of_memory():
    with pytest.raises(OutOfMemoryError) as ei:
        PagePool(1 << 50)
    assert ei.value.asked_bytes == 1 << 50 and ei.value.total_bytes > 0


def test_use_after_close(pool):
    s = pool.create_slot(8 * SMALL_PAGE, "s")
    s.map(0, 3)
    s.close()
    s.close()  # idempotent
    assert s.closed and pool.free_pages == pool.total_pages and pool.pages_by_tag() == {"free": 64}
    for call in (lambda: s.map(0, 1), lambda: s.unmap(0, 1), lambda: s.is_mapped(0), lambda: s.mapped_ranges()):
        with pytest.raises(ClosedError):
            call()
    t = pool.create_slot(8 * SMALL_PAGE, "t")
    t.map(0, 1)
    pool.close()
    pool.close()
    assert pool.closed and t.closed
    with pytest.raises(ClosedError):
        t.map(1, 1)
    with pytest.raises(ClosedError):
        pool.create_slot(SMALL_PAGE, "u")


def test_dropping_a_slot_returns_its_pages(pool):
    s = pool.create_slot(8 * SMALL_PAGE, "s")
    s.map(0, 5)
    del s
    assert pool.free_pages == pool.total_pages and pool.pages_by_tag() == {"free": 64}


def test_context_managers():
    with PagePool(4 * SMALL_PAGE, page_bytes=SMALL_PAGE) as p:
        with p.create_slot(4 * SMALL_PAGE, "s") as s:
            s.map(0, 4)
        assert p.free_pages == 4
    assert p.closed and "closed" in repr(p)


def test_cuda_backend_says_why_it_is_unavailable():
    from warmserve.errors import BackendUnavailableError
    from warmserve.memory import cuda_compiled

    if cuda_compiled() and torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/gpu covers the cuda backend")
    with pytest.raises(BackendUnavailableError, match="libcuda|cuda.h|cuda device"):
        PagePool(PAGE_BYTES, backend="cuda")
