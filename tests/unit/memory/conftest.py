import pytest

from warmserve.memory import PagePool

#: Small pages keep the tests fast; the 2 MiB default is exercised where it matters.
SMALL_PAGE = 4096


@pytest.fixture
def pool():
    with PagePool(64 * SMALL_PAGE, page_bytes=SMALL_PAGE) as p:
        yield p


@pytest.fixture
def hpool():
    """A host pool of 8 MiB in 4 KiB pages, not prefaulted (the host-cache tests'; some define their own size)."""
    with PagePool(8 << 20, page_bytes=SMALL_PAGE, prefault=False) as p:
        yield p
