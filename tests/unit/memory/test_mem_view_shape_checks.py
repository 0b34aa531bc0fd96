"""Bad view shapes are refused typed, naming what is wrong (found in review: tensor() with a byte count past 2**64
gave a bare pybind TypeError; tensors() checked no dimension: a negative or float one gave a bare TypeError, two
negative ones a torch RuntimeError)."""
import pytest
import torch

from warmserve.errors import InvalidArgumentError
from warmserve.memory import PagePool

PAGE = 4096


@pytest.fixture
def slot():
    with PagePool(16 * PAGE, page_bytes=PAGE) as pool:
        s = pool.create_slot(8 * PAGE, "s")
        s.map(0, 8)
        yield s
        s.close()


@pytest.mark.parametrize("shape, match", [
    ((2**40, 2**40), "past the largest view"),
    ((2**32, 2**32), "past the largest view"),  # 2**64 bytes exactly: one past the largest count
    ((-4,), "dimension 0 must be non-negative"),
    ((-2, -2), "dimension 0 must be non-negative"),
    ((4, 2.5), "dimension 1 must be an int"),
    (("4",), "dimension 0 must be an int"),
])
def test_bad_shapes_are_refused_typed(slot, shape, match):
    with pytest.raises(InvalidArgumentError, match=match):
        slot.tensor(0, shape, torch.uint8)
    with pytest.raises(InvalidArgumentError, match=match) as ei:
        slot.tensors({"a": (0, (4,), torch.uint8), "w": (0, shape, torch.uint8)})
    assert "w" in str(ei.value)  # the tensor it is about


def test_a_shape_that_is_no_sequence_is_refused_typed(slot):
    with pytest.raises(InvalidArgumentError, match="sequence of ints"):
        slot.tensor(0, 2.5, torch.uint8)
    with pytest.raises(InvalidArgumentError, match="sequence of ints"):
        slot.tensors({"w": (0, 2.5, torch.uint8)})


def test_a_product_past_the_limit_only_with_the_item_size_is_refused(slot):
    with pytest.raises(InvalidArgumentError, match="past the largest view"):
        slot.tensor(0, (2**62,), torch.float32)
    with pytest.raises(InvalidArgumentError, match="past the largest view"):
        slot.tensors({"w": (0, (2**62,), torch.float32)})


def test_good_shapes_still_work(slot):
    t = slot.tensors({"a": (0, (2, 3), torch.float32), "b": (64, (0,), torch.uint8), "c": (128, 5, torch.int16)})
    assert t["a"].shape == (2, 3) and t["b"].numel() == 0 and t["c"].shape == (5,)
    assert slot.tensor(0, (4, 0), torch.uint8).numel() == 0
