"""A worker whose log cannot take a byte (its --log-dir's disk full) serves on. Found in review: the banner it
prints once started raised ENOSPC, so a worker restarted with its log on a full disk exited 1 at every restart and
its models went unserved, though serving needs no disk. /dev/full is the real thing with no mount: every write to
it fails with ENOSPC."""

from __future__ import annotations

import os
import subprocess

import pytest

from warmserve.worker.client import WorkerClient
from warmserve.worker.spawn import spawn_local_worker


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_worker_with_its_log_on_a_full_disk_starts_and_answers():
    proc, endpoint = spawn_local_worker("cpu", 0.1, 1, log_path="/dev/full")
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # the banner comes right after the ready line
            proc.wait(timeout=2.0)
        client = WorkerClient(endpoint)
        try:
            assert client.stats().worker_id == proc.hello.worker_id
        finally:
            client.close()
    finally:
        proc.kill()
        proc.wait()
