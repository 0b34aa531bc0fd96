"""Slot.tensor / Slot.tensors arguments, found in review: a dtype that is not a torch.dtype (the string 'float32', as
configs spell it, or None) came back as AttributeError "'str' object has no attribute 'itemsize'", and a tensors()
layout entry that is not a (byte_offset, shape, dtype) triple as a bare ValueError from unpacking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from warmserve.errors import InvalidArgumentError
from warmserve.memory import PagePool

PAGE = 4096


@pytest.fixture
def slot():
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        s = pool.create_slot(PAGE, "views")
        s.map(0, 1)
        yield s
        s.close(force=True)


@pytest.mark.parametrize("dtype", ["float32", None, np.float32, 4])
def test_tensor_with_a_dtype_that_is_not_a_torch_dtype_is_refused(slot, dtype):
    with pytest.raises(InvalidArgumentError, match="torch.dtype") as info:
        slot.tensor(0, (4,), dtype)
    assert repr(dtype) in str(info.value)


@pytest.mark.parametrize("dtype", ["bfloat16", None])
def test_tensors_with_a_dtype_that_is_not_a_torch_dtype_is_refused(slot, dtype):
    with pytest.raises(InvalidArgumentError, match="torch.dtype") as info:
        slot.tensors({"ok": (0, (4,), torch.float32), "w": (16, (4,), dtype)})
    assert "'w'" in str(info.value) and repr(dtype) in str(info.value)


@pytest.mark.parametrize("entry", [(0, (4,)), (0, (4,), torch.float32, 1), 7, "abc", None])
def test_tensors_with_an_entry_that_is_not_a_triple_is_refused(slot, entry):
    with pytest.raises(InvalidArgumentError, match=r"\(byte_offset, shape, dtype\)") as info:
        slot.tensors({"w": entry})
    assert "'w'" in str(info.value)


def test_tensors_with_a_layout_that_is_not_a_mapping_is_refused(slot):
    with pytest.raises(InvalidArgumentError, match="dict"):
        slot.tensors([("w", (0, (4,), torch.float32))])


def test_good_arguments_still_make_views(slot):
    t = slot.tensor(0, (4,), torch.float32)
    t.fill_(1.5)
    views = slot.tensors({"a": (0, (4,), torch.float32), "b": [16, [2], torch.int64]})
    assert views["a"].tolist() == [1.5] * 4
    assert views["b"].shape == (2,)
