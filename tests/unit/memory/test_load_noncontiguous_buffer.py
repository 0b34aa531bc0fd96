"""A load source that is a buffer but not C-contiguous (a memoryview slice with a step, a numpy array's strided
view) is refused with InvalidArgumentError saying it must be C-contiguous, before anything is mapped. Found in
review: the memoryview escaped as a bare BufferError."""

from __future__ import annotations

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.memory import PagePool

PAGE = 4096


@pytest.mark.parametrize("make", [lambda: memoryview(bytearray(2 * PAGE))[::2],
                                  lambda: np.zeros(2 * PAGE, np.uint8)[::2],
                                  lambda: np.zeros((64, 128), np.uint8).T],
                         ids=["memoryview-step", "ndarray-step", "ndarray-transposed"])
def test_a_strided_buffer_source_is_refused_saying_it_must_be_c_contiguous(make):
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(4 * PAGE, "s")
        with pytest.raises(InvalidArgumentError, match="C-contiguous") as ei:
            slot.load([(make(), 0, 0, PAGE)]).wait()
        assert "Fix" in str(ei.value)
        assert (slot.mapped_pages, pool.free_pages) == (0, 16)
        # its contiguous copy loads
        slot.load([(bytes(make()), 0, 0, PAGE)]).wait()
        assert slot.mapped_pages == 1
