import faulthandler
import os
import signal

import pytest
import torch

from warmserve.errors import ViewsAliveError
from warmserve.memory import PagePool

SMALL_PAGE = 4096  # the pool fixture (conftest.py) uses pages of this size


def test_view_is_zero_copy_with_dtype_and_shape(pool):
    s = pool.create_slot(8 * SMALL_PAGE, "s")
    s.map(0, 2)
    a = s.tensor(0, (2, SMALL_PAGE // 4), torch.float32)
    b = s.tensor(SMALL_PAGE, (SMALL_PAGE,), torch.uint8)
    a[1, 0] = 1.0  # float32 1.0 is 00 00 80 3f
    assert b[:4].tolist() == [0, 0, 0x80, 0x3F]
    assert a.data_ptr() == s.base_address and a.device.type == "cpu"
    assert s.tensor(0, (0,), torch.float32).numel() == 0


def test_pinned_view_blocks_unmap_move_close_until_collected(pool):
    s = pool.create_slot(8 * SMALL_PAGE, "s")
    d = pool.create_slot(8 * SMALL_PAGE, "d")
    s.map(0, 4)
    v = s.tensor(SMALL_PAGE, (2, SMALL_PAGE), torch.uint8)  # pages 1..2
    row = v[1]  # a slice shares the storage: it keeps the pin too
    del v
    s.unmap(0, 1)  # page 0 is not covered
    with pytest.raises(ViewsAliveError, match="page 2"):
        s.unmap(2, 2)
    with pytest.raises(ViewsAliveError):
        s.move_pages(1, 1, d, 0)
    with pytest.raises(ViewsAliveError):
        s.close()
    assert s.mapped_ranges() == [(1, 3)]
    del row  # the last tensor on that storage: the pin goes with it
    s.move_pages(1, 2, d, 0)
    s.close()
    assert pool.pages_by_tag() == {"d": 2, "free": 62}


def test_unpinned_view_allows_unmap_and_sees_remapped_pages(pool):
    kv = pool.create_slot(8 * SMALL_PAGE, "kv")
    whole = kv.tensor(0, (8, SMALL_PAGE), torch.uint8, pinned=False)  # over unmapped pages
    kv.map(3, 1)
    whole[3].fill_(9)
    assert kv.is_mapped(3) and int(whole[3, 0]) == 9
    kv.unmap(3, 1)  # allowed: the engine checks is_mapped before it touches a block
    assert not kv.is_mapped(3)


def test_force_close_with_live_view(pool):
    s = pool.create_slot(4 * SMALL_PAGE, "s")
    s.map(0, 1)
    v = s.tensor(0, (16,), torch.uint8)
    s.close(force=True)
    assert pool.free_pages == pool.total_pages and v.numel() == 16  # v must not be touched any more


@pytest.mark.parametrize("how", ["unmap", "close"])
# Python 3.12+ warns at an os.fork() while threads run (left by other tests here), found running these on 3.13
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_touching_an_unmapped_range_faults_cleanly(how):
    # The reservation is PROT_NONE: a stale view crashes on access instead of reading another slot's data.
    # The crash happens in a forked child.
    pool = PagePool(16 * SMALL_PAGE, page_bytes=SMALL_PAGE)
    s = pool.create_slot(4 * SMALL_PAGE, "s")
    other = pool.create_slot(4 * SMALL_PAGE, "other")
    s.map(0, 1)
    v = s.tensor(0, (SMALL_PAGE,), torch.uint8, pinned=False)
    v.fill_(7)
    if how == "unmap":
        s.unmap(0, 1)
    else:
        s.close()
    other.map(0, 1)  # gets the page back, still holding the 7s
    assert other.physical_pages(0, 1) == [0]
    pid = os.fork()
    if pid == 0:
        faulthandler.disable()  # the crash is expected: no report on the test's stderr
        os.close(2)
        value = int(v[0])
        os._exit(100 + value)  # reached only if the read did not fault
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV, status
    pool.close()


def test_tensors_carves_many_views_under_one_pin(pool):
    s = pool.create_slot(8 * SMALL_PAGE, "w")
    s.map(0, 3)
    ts = s.tensors({
        "a": (0, (4, 4), torch.float32),
        "b": (SMALL_PAGE, (SMALL_PAGE // 2,), torch.bfloat16),
        "c": (2 * SMALL_PAGE + 8, (2,), torch.int64),
    })
    ts["b"].fill_(1.5)
    assert ts["b"].dtype == torch.bfloat16 and ts["b"].data_ptr() == s.base_address + SMALL_PAGE
    assert ts["c"].data_ptr() == s.base_address + 2 * SMALL_PAGE + 8 and ts["a"].shape == (4, 4)
    a = ts.pop("a")
    del ts
    with pytest.raises(ViewsAliveError):
        s.unmap(2, 1)  # "a" alone keeps the whole span pinned
    del a
    s.unmap(0, 3)
    assert s.tensors({}) == {}
