"""The worker command's set-up: device names, pool sizing."""

from __future__ import annotations

import argparse

import pytest

from warmserve import errors
from warmserve.worker.main import add_arguments, build_pool, check_device


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:7"])
def test_device_names(device):
    check_device(device)


@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:x", "gpu0", ""])
def test_bad_device_names_say_what_is_expected(device):
    with pytest.raises(errors.InvalidArgumentError, match="cpu or cuda:N"):
        check_device(device)


def test_a_budget_in_gib_becomes_whole_pages():
    with build_pool("cpu", 0.0125) as pool:  # 12.8 MiB
        assert pool.total_bytes == 6 * (2 << 20) == pool.free_bytes


def test_a_budget_under_one_page_is_refused_with_the_numbers():
    with pytest.raises(errors.InvalidArgumentError, match="raise --memory-gib") as ei:
        build_pool("cpu", 0.001)
    assert ei.value.page_bytes == 2 << 20


def test_command_line_defaults():
    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args([])
    assert (a.device, a.controller, a.bind, a.heartbeat_interval_s) == ("cpu", None, None, 1.0)
    with pytest.raises(SystemExit):  # one way to be reached, not two
        p.parse_args(["--bind", "tcp://127.0.0.1:1", "--controller", "tcp://127.0.0.1:2"])
