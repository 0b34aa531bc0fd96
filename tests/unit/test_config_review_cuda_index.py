"""Found in review: devices "cuda:0" and "cuda:00" passed ClusterConfig's one-worker-per-GPU check (it compared the
strings), so GPU 0 got two workers, each sizing its pool to most of the GPU's free memory; and torch refuses the
string "cuda:00" (an untyped RuntimeError "Invalid device string" at the worker's start-up). A device's index is now
read as a number and the device written as cuda:N, so the two are one GPU named twice."""

from __future__ import annotations

import pytest

from warmserve.config import ClusterConfig
from warmserve.errors import InvalidArgumentError


@pytest.mark.parametrize("devices", [("cuda:0", "cuda:00"), ("cuda:007", "cuda:7"), ("cuda:1", "cuda:01", "cpu:0")])
def test_two_spellings_of_one_gpu_are_refused_as_a_gpu_named_twice(devices):
    with pytest.raises(InvalidArgumentError, match="name a GPU twice") as e:
        ClusterConfig(devices=devices)
    assert e.value.key == "devices"


def test_a_device_index_with_leading_zeros_is_kept_as_torch_reads_it():
    assert ClusterConfig(devices=("cuda:00", "cuda:01", "cpu:00")).devices == ("cuda:0", "cuda:1", "cpu:0")
    assert ClusterConfig(devices="cuda:10").devices == ("cuda:10",)


@pytest.mark.parametrize("device", ["cuda:\u0663", "cuda:\u00b2", "cuda:+1", "cuda:-1", "cuda: 1"])
def test_an_index_of_other_than_ascii_digits_is_refused(device):
    with pytest.raises(InvalidArgumentError, match="must look like 'cuda:0'"):
        ClusterConfig(devices=(device,))
