"""A Cluster's worker socket on the addresses ZeroMQ takes beyond IPv4 tcp, and a constructor that fails early
(found in review: an IPv6 bind failed with "No such device", ZMQ_IPV6 never being set; an ipc:// bind left its
socket file behind after close(); a missing history file left the controller's loop thread running for as long as
the exception was referenced)."""

from __future__ import annotations

import os
import threading

import pytest

import warmserve
from warmserve.errors import WarmServeError

import serving

MODEL = "llama-20m"


def _cluster(**kw):
    path = serving.demo_paths((MODEL,))[MODEL]
    return warmserve.Cluster([path], cpu_workers=1, cpu_worker_memory_bytes=512 << 20, **kw)


@pytest.mark.skipif(not serving.ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_a_cluster_whose_workers_connect_over_ipv6_serves():
    with _cluster(bind="tcp://[::1]:0") as c:
        assert c.endpoint.startswith("tcp://[::1]:"), c.endpoint
        assert c.generate(MODEL, "hello", max_tokens=2).completion_tokens >= 1


def test_an_ipc_bind_leaves_no_socket_file_after_close(tmp_path):
    path = tmp_path / "controller.sock"
    with _cluster(bind=f"ipc://{path}") as c:
        assert path.exists()
        assert c.generate(MODEL, "hello", max_tokens=2).completion_tokens >= 1
    assert not path.exists()


def test_a_missing_history_file_starts_no_loop_thread(tmp_path):
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(WarmServeError) as ei:
        _cluster(history_path=str(tmp_path / "nowhere.csv"))
    assert ei.value is not None  # still referenced: its frames hold the half-made Cluster
    started = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not any(n.startswith("warmserve-controller") for n in started), started
    assert not os.path.exists(tmp_path / "nowhere.csv")
