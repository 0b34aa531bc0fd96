"""PagePool.pages_by_tag() after close(): the ClosedError create_slot gives, not a count of pages no slot holds."""
import threading

import pytest
import torch

from warmserve.errors import ClosedError
from warmserve.memory import PagePool

SMALL_PAGE = 4096


def test_pages_by_tag_after_close_raises_closed_error_like_create_slot(pool):
    a = pool.create_slot(8 * SMALL_PAGE, "a")  # held: a dropped slot returns its pages
    a.map(0, 2)
    assert pool.pages_by_tag() == {"a": 2, "free": 62}
    pool.close()
    with pytest.raises(ClosedError) as by_tag:
        pool.pages_by_tag()
    with pytest.raises(ClosedError) as create:
        pool.create_slot(SMALL_PAGE, "b")
    assert "the page pool is closed" in str(by_tag.value) and "the page pool is closed" in str(create.value)
    assert "before pool.close()" in str(by_tag.value)  # the fix


def test_pages_by_tag_after_close_with_a_live_pinned_view_raises_not_a_short_count():
    # Before: {"free": 15} of 16 pages, the page under the view counted under no tag.
    with PagePool(16 * SMALL_PAGE, page_bytes=SMALL_PAGE) as p:
        s = p.create_slot(8 * SMALL_PAGE, "s")
        s.map(0, 4)
        v = s.tensor(SMALL_PAGE, (SMALL_PAGE,), torch.uint8)
        p.close()
        assert p.free_pages == 15  # the page under the view stays mapped
        with pytest.raises(ClosedError):
            p.pages_by_tag()
        assert p.stats()["total_pages"] == 16  # the counters stay readable
        del v


def test_pages_by_tag_racing_close_gives_a_full_count_or_closed_error():
    for _ in range(50):
        p = PagePool(16 * SMALL_PAGE, page_bytes=SMALL_PAGE)
        s = p.create_slot(8 * SMALL_PAGE, "s")
        s.map(0, 3)
        closer = threading.Thread(target=p.close)
        closer.start()
        try:
            assert p.pages_by_tag() == {"s": 3, "free": 13}
        except ClosedError:
            pass
        closer.join()
