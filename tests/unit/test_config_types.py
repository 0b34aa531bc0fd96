"""Every field of the config tree is checked for its declared type where it is built, by the Python API as by a
config file (found in review: ``insecure="false"`` was taken as true and let a controller listen on every
interface unauthenticated; a ModelSpec name 7 or ``engine={}`` failed every request; ``controller=None`` and a float
page size failed in Cluster() with bare errors; strings for counts were bare TypeErrors; three checks raised plain
ValueErrors; a controller bound to inproc:// waited out its start timeout for workers that cannot reach it)."""

from __future__ import annotations

import numpy as np
import pytest

from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec, ServerConfig
from warmserve.errors import InvalidArgumentError


@pytest.mark.parametrize("build, key", [
    (lambda: ControllerConfig(insecure="false"), "insecure"),
    (lambda: ControllerConfig(insecure=1), "insecure"),
    (lambda: ModelSpec("/ckpt/m", name=7), "name"),
    (lambda: ModelSpec("/ckpt/m", tp=True), "tp"),
    (lambda: ModelSpec("/ckpt/m", dtype=None), "dtype"),
    (lambda: ClusterConfig(engine={}), "engine"),
    (lambda: ClusterConfig(controller=None), "controller"),
    (lambda: ClusterConfig(server={"port": 1}), "server"),
    (lambda: ClusterConfig(worker_page_bytes=2097152.0), "worker_page_bytes"),
    (lambda: ClusterConfig(worker_page_bytes="2097152"), "worker_page_bytes"),
    (lambda: ClusterConfig(worker_start_timeout_s="9"), "worker_start_timeout_s"),
    (lambda: ControllerConfig(max_queue="5"), "max_queue"),
    (lambda: ControllerConfig(policy_config={"window_s": 30}), "policy_config"),
    (lambda: ServerConfig(max_concurrent_requests="9"), "max_concurrent_requests"),
    (lambda: ServerConfig(api_key=5), "api_key"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_its_field(build, key):
    with pytest.raises(InvalidArgumentError, match=key) as ei:
        build()
    assert ei.value.key == key


@pytest.mark.parametrize("build, key", [
    (lambda: ControllerConfig(worker_timeout_s=1.0, heartbeat_interval_s=0.6), "worker_timeout_s"),
    (lambda: ControllerConfig(max_queue=0), "max_queue"),
    (lambda: ControllerConfig(max_worker_losses_per_request=0), "max_worker_losses_per_request"),
])
def test_range_checks_are_typed_errors_naming_the_key(build, key):
    with pytest.raises(InvalidArgumentError) as ei:
        build()
    assert ei.value.key == key


def test_a_negative_count_is_refused_without_a_wrong_default_named():
    with pytest.raises(InvalidArgumentError) as ei:
        ClusterConfig(cpu_workers=-1)
    assert "0: the default" not in str(ei.value) and ei.value.key == "cpu_workers"


def test_numbers_a_user_means_are_taken():
    cfg = ClusterConfig(cpu_workers=np.int64(3), cpu_worker_memory_bytes=np.uint32(1 << 30),
                        controller=ControllerConfig(tick_s=1, drain_timeout_s=np.float64(2.5)))
    assert type(cfg.cpu_workers) is int and cfg.cpu_workers == 3 and type(cfg.cpu_worker_memory_bytes) is int
    assert cfg.controller.tick_s == 1 and cfg.controller.drain_timeout_s == 2.5
    assert ControllerConfig(insecure=True).insecure is True
    assert ControllerConfig(insecure=np.True_).insecure is True  # a numpy bool is a bool
    assert ServerConfig(api_key=None).api_key == "" and ModelSpec("/ckpt/m", name=None).name == "m"  # None: default


def test_a_controller_bound_to_inproc_is_refused_at_once():
    with pytest.raises(InvalidArgumentError, match="workers are other processes"):
        ControllerConfig(bind="inproc://controller")
    assert ControllerConfig(bind="ipc:///tmp/ws-controller").bind == "ipc:///tmp/ws-controller"


def test_a_gpu_named_twice_is_refused():
    with pytest.raises(InvalidArgumentError, match="name a GPU twice") as ei:
        ClusterConfig(devices=("cuda:0", "cuda:1", "cuda:0"))
    assert ei.value.key == "devices"
    assert ClusterConfig(devices=("cuda:0", "cuda:1")).devices == ("cuda:0", "cuda:1")


def test_an_array_of_numpy_bools_is_no_bool():
    for bad in (np.array([True, False]), np.array([], dtype=bool)):
        with pytest.raises(InvalidArgumentError) as ei:
            ControllerConfig(insecure=bad)
        assert ei.value.key == "insecure"
