"""A started worker logs at the server's level. Found in review of the logs: `spawn_worker` passed no --log-level,
so local (and Ray) workers logged at their own default, WARNING, whatever `serve --log-level` said, and their INFO
lines (a drain's end, a reconnect to the controller, a controller not reachable yet) never showed."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from warmserve.controller.launch import worker_log_args

MODEL = "llama-20m"
#: What a worker writes at INFO once its drain is over (worker/server.py).
DRAINED = "drained: every request in flight has finished"


@pytest.fixture
def warmserve_level():
    logger = logging.getLogger("warmserve")
    before = logger.level

    def set_level(level: int) -> None:
        logger.setLevel(level)

    yield set_level
    logger.setLevel(before)


@pytest.mark.parametrize("level, name", [(logging.DEBUG, "DEBUG"), (logging.INFO, "INFO"), (25, "INFO"),
                                         (logging.WARNING, "WARNING"), (5, "DEBUG"), (60, "CRITICAL")])
def test_the_flag_is_the_highest_worker_level_at_or_below_the_servers(warmserve_level, level, name):
    warmserve_level(level)
    assert worker_log_args() == ("--log-level", name)


def test_a_clusters_worker_logs_at_the_servers_level(warmserve_level, tmp_path):
    """A worker of a cluster whose warmserve logger is at INFO, sent SIGTERM: its drain's INFO line is in its log
    (before: the worker ran at WARNING and wrote nothing)."""
    from warmserve import Cluster
    from warmserve.engine.demo import write_demo_models

    warmserve_level(logging.INFO)
    path = write_demo_models(None, (MODEL,))[MODEL]
    logs = tmp_path / "logs"
    with Cluster([path], cpu_workers=1, log_dir=logs) as c:
        (proc,) = c.controller.local_procs.values()
        os.kill(proc.pid, signal.SIGTERM)  # idle: it drains at once, and says so at INFO
        deadline = time.monotonic() + 30
        while not any(DRAINED in f.read_text() for f in logs.glob("*.log")) and time.monotonic() < deadline:
            time.sleep(0.1)
        text = "".join(f.read_text() for f in logs.glob("*.log"))
        assert DRAINED in text, text
