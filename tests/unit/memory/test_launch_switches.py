"""The two process-wide launch switches of the kernels (memory/kernels.py) on a machine without a GPU: programmatic
dependent launch cannot be switched on (a typed error with the fix) and stays off; the split merge's default
takes booleans only and hands back the previous value. Their numerics: tests/gpu/test_split_merge_and_pdl.py."""

import pytest
import torch

from warmserve import _C
from warmserve.errors import BackendUnavailableError, InvalidArgumentError
from warmserve.memory import kernels

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


@no_gpu
def test_programmatic_launch_cannot_be_switched_on_without_a_gpu():
    assert kernels.programmatic_launch() is False
    with pytest.raises(BackendUnavailableError, match="needs the CUDA kernels and a GPU"):
        kernels.set_programmatic_launch(True)
    assert kernels.programmatic_launch() is False
    assert kernels.set_programmatic_launch(False) is False


def test_the_binding_switch_round_trips_where_kernels_are_built():
    if not kernels.kernels_compiled():
        with pytest.raises(BackendUnavailableError):
            _C.kernel_set_programmatic_launch(True)
        return
    # the C++ flag alone (no launch happens): it reports the previous setting and is left off
    assert _C.kernel_set_programmatic_launch(True) is False
    assert _C.kernel_programmatic_launch() is True
    assert _C.kernel_set_programmatic_launch(False) is True
    assert kernels.programmatic_launch() is False


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_switches_take_booleans_only(bad):
    with pytest.raises(InvalidArgumentError, match="True or False"):
        kernels.set_programmatic_launch(bad)
    with pytest.raises(InvalidArgumentError, match="True or False"):
        kernels.set_merge_in_kernel(bad)


def test_the_merge_default_hands_back_the_previous_one():
    first = kernels.set_merge_in_kernel(False)
    try:
        assert first is True  # the default since an H200 ran it: the splits merge themselves
        assert kernels.set_merge_in_kernel(True) is False
    finally:
        kernels.set_merge_in_kernel(first)


@pytest.mark.parametrize("bad", [5, 0, True, "8", 8.0])
def test_gemv_in_flight_takes_four_or_eight_only(bad):
    with pytest.raises(InvalidArgumentError, match="4 or 8"):
        kernels.set_gemv_in_flight(bad)


def test_gemv_in_flight_hands_back_the_previous_setting():
    first = kernels.set_gemv_in_flight(8)
    try:
        assert first == 4  # the default, as first measured
        assert kernels.set_gemv_in_flight(4) == 8
    finally:
        kernels.set_gemv_in_flight(first)
