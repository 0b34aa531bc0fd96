"""A local worker that cannot start (here: a module it imports fails) fails the cluster's start with an error that
names it, its exit status and where to look. Found in review: "a local worker exited with
status 2 before it registered; see its log", naming none of them, with several workers to choose from."""

import os
import re
import socket

import pytest

import warmserve
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.errors import WorkerLostError
from warmserve.policy.config import PolicyConfig

import serving

MODEL = "llama-20m"


def test_a_local_worker_that_exits_before_it_registers_is_named_in_the_start_error(tmp_path, monkeypatch):
    path = serving.demo_paths((MODEL,))[MODEL]
    # the worker exits at its start: a msgspec on its PYTHONPATH ends it (this process has its own imported). Used
    # here before, and refused by the controller now before any worker starts: a pool too small for the model, a
    # host cache directory that is a file (unit/controller/test_launch_host_cache_dir.py).
    (tmp_path / "fail").mkdir()
    (tmp_path / "fail" / "msgspec.py").write_text("raise SystemExit('this test: the worker cannot start')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fail"))
    cfg = ClusterConfig(models=(ModelSpec(path=path),), devices=("cpu:0",), cpu_worker_memory_bytes=512 << 20,
                        cpu_worker_threads=1, worker_start_timeout_s=60, fork_cpu_workers=False,
                        controller=ControllerConfig(policy_config=PolicyConfig(window_s=30), tick_s=0.2,
                                                    heartbeat_interval_s=0.2, worker_timeout_s=2.0))
    with pytest.raises(WorkerLostError, match="before it registered") as e:
        warmserve.Cluster(None, config=cfg, log_dir=str(tmp_path))
    # N in wN counts the local workers of every cluster this process started (other tests may have run first)
    wid = e.value.worker_id
    assert re.fullmatch(rf"{re.escape(socket.gethostname())}-{os.getpid()}w\d+-cpu0", wid), wid
    assert wid in str(e.value), str(e.value)
    assert e.value.status not in (None, 0) and f"status {e.value.status}" in str(e.value)
    assert "see its log" in str(e.value)
    assert "this test: the worker cannot start" in (tmp_path / f"{wid}.log").read_text()
    # the error quotes the log's last line (found in review: "see its log" alone, the reason in the file)
    assert f"see its log {tmp_path / (wid + '.log')} (last line: this test: the worker cannot start)" in str(e.value)
