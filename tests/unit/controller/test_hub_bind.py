"""The controller's worker socket on a port another process holds: a typed error that names the endpoint and the
fix, and nothing left behind (the CURVE authenticator's thread, the ZeroMQ context, the temp dir with the local
workers' fresh secret key). Real sockets, real CURVE keys."""

import asyncio
import os
import socket
import tempfile
import threading

import pytest
import zmq.auth

from warmserve.config import ClusterConfig, ControllerConfig
from warmserve.controller.launch import start_cluster
from warmserve.controller.workers import WorkerHub
from warmserve.errors import InvalidArgumentError, WarmServeError


@pytest.fixture
def held_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_a_curve_hub_on_a_port_in_use_raises_a_typed_error_and_leaves_nothing(tmp_path, held_port, monkeypatch):
    curve = tmp_path / "curve"
    curve.mkdir()
    zmq.auth.create_certificates(str(curve), "server")
    (curve / "workers").mkdir()
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # where the hub's key dir would be made
    threads = set(threading.enumerate())
    endpoint = f"tcp://127.0.0.1:{held_port}"
    with pytest.raises(InvalidArgumentError) as e:
        WorkerHub(endpoint, on_hello=None, on_event=None, on_lost=None, curve_dir=str(curve))
    assert isinstance(e.value, WarmServeError) and e.value.endpoint == endpoint
    assert "pick another port" in str(e.value) and endpoint in str(e.value)
    assert "warmserve.Cluster's bind=" in str(e.value)  # it serves both (found in review: only --bind was named)
    assert os.listdir(private_tmp) == [], "the local workers' secret key was left behind"
    assert set(threading.enumerate()) - threads == set(), "the CURVE authenticator's thread was left running"


def test_start_cluster_on_a_port_in_use_fails_with_the_typed_error(model, held_port):
    cfg = ClusterConfig(models=(model.spec,), cpu_workers=1,
                        controller=ControllerConfig(bind=f"tcp://127.0.0.1:{held_port}"))
    with pytest.raises(InvalidArgumentError, match="pick another port"):
        asyncio.run(asyncio.wait_for(start_cluster(cfg), 20))


def test_start_cluster_refuses_a_tp_wider_than_its_local_workers_before_spawning_any(model, monkeypatch):
    """With no remote workers every worker is local, on this machine: a tp-2 model on one CPU worker is refused
    before a worker process starts (the controller's check after registration is for clusters with remote ones)."""
    import dataclasses

    import warmserve.controller.launch as launch

    spawned = []
    monkeypatch.setattr(launch, "spawn_worker", lambda *a, **k: spawned.append(a))
    spec = dataclasses.replace(model.spec, tp=2)
    cfg = ClusterConfig(models=(spec,), devices=("cpu:0",), controller=ControllerConfig(bind="tcp://127.0.0.1:0"))
    with pytest.raises(InvalidArgumentError, match="needs tp=2 workers on one machine, but the widest machine has 1"):
        asyncio.run(asyncio.wait_for(start_cluster(cfg), 20))
    assert spawned == []
