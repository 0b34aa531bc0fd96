"""The workers' page size when none is chosen (ClusterConfig.worker_page_bytes = 0): 32 MiB when every started
worker is on a GPU, where each page is a driver allocation of its own (bench/switch/README.md), else 2 MiB; resolved
once, before the controller plans with it."""

import argparse

import pytest

from warmserve.config import ClusterConfig, with_worker_page_bytes
from warmserve.controller.controller import Controller
from warmserve.errors import InvalidArgumentError
from warmserve.geometry import GPU_PAGE_BYTES, PAGE_BYTES, default_page_bytes
from warmserve.worker.main import add_arguments, build_pool


@pytest.mark.parametrize("devices, want", [
    (["cuda:0"], GPU_PAGE_BYTES),
    (["cuda:0", "cuda:1"], GPU_PAGE_BYTES),
    (["cuda:0", "cpu:0"], PAGE_BYTES),  # one page for every worker of a cluster: the controller plans with one
    (["cpu:0", "cpu:1"], PAGE_BYTES),
    ([], PAGE_BYTES),
])
def test_default_page_by_device(devices, want):
    assert default_page_bytes(devices) == want
    assert with_worker_page_bytes(ClusterConfig(), devices).worker_page_bytes == want


def test_a_chosen_page_is_kept_and_a_bad_one_refused():
    cfg = ClusterConfig(worker_page_bytes=8 << 20)
    assert with_worker_page_bytes(cfg, ["cuda:0"]) is cfg
    assert ClusterConfig().worker_page_bytes == 0
    with pytest.raises(InvalidArgumentError, match="or 0 for the default by device"):
        ClusterConfig(worker_page_bytes=3 << 20)


def test_a_controller_from_a_bare_config_plans_with_the_2_mib_unit(tmp_path):
    from warmserve.controller.models import controller_model
    from warmserve.engine.demo import write_demo_models

    path = write_demo_models(str(tmp_path), names=["llama-20m"])["llama-20m"]
    cfg = ClusterConfig(models=(path,))
    ctl = Controller(cfg, [controller_model(s) for s in cfg.models])
    assert {i.page_bytes for i in ctl.state.models.values()} == {PAGE_BYTES}
    ctl = Controller(with_worker_page_bytes(cfg, ["cuda:0"]), [controller_model(s) for s in cfg.models])
    assert {i.page_bytes for i in ctl.state.models.values()} == {GPU_PAGE_BYTES}


def test_the_worker_flag_defaults_by_device():
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--device", "cuda:0"]).page_mib is None  # build_pool: the device's default
    with build_pool("cpu", 1 / 16, prefault=False) as pool:
        assert pool.page_bytes == PAGE_BYTES
