"""Found in review: `warmserve worker --device cuda:00` passed check_device (a string of digits), then torch refused
"cuda:00" at start-up with an untyped RuntimeError "Invalid device string". check_device now returns the device
as torch writes it (cuda:0), which the worker uses from then on, and refuses an index of other than ASCII digits."""

from __future__ import annotations

import pytest

from warmserve import errors
from warmserve.worker.main import add_arguments, check_args, check_device


@pytest.mark.parametrize("device, canonical", [("cuda:00", "cuda:0"), ("cuda:007", "cuda:7"), ("cuda:10", "cuda:10"),
                                               ("cuda", "cuda"), ("cpu", "cpu")])
def test_check_device_returns_the_device_as_torch_reads_it(device, canonical):
    assert check_device(device) == canonical


@pytest.mark.parametrize("device", ["cuda:\u0663", "cuda:\u00b2", "cuda:+1"])
def test_an_index_of_other_than_ascii_digits_is_refused(device):
    with pytest.raises(errors.InvalidArgumentError, match="cpu or cuda:N"):
        check_device(device)


def test_the_worker_runs_on_the_canonical_device():
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--device", "cuda:00"])
    check_args(args)
    assert args.device == "cuda:0"


def test_torch_takes_what_check_device_returns():
    torch = pytest.importorskip("torch")
    assert torch.device(check_device("cuda:00")) == torch.device("cuda", 0)
