"""Two deployments of warmserve side by side on one machine, found in review: two `warmserve.Cluster`s (or serves)
given one `bind="ipc://PATH"` (a config copied for staging): the second bound it too, ZeroMQ removing the first's
socket file, unsaid; the first one's worker, SIGKILLed and restarted, joined the second controller (the first was
left with no worker), and the second's close removed the file, so no restart could reach the first again. Now the
second is refused before it starts a worker, and the first serves on with its file."""

import os
import shutil
import tempfile
import time

import pytest

import serving
import warmserve
from warmserve.errors import InvalidArgumentError

MODEL = "llama-20m"


def test_a_second_cluster_on_the_first_ones_ipc_address_is_refused_and_the_first_serves_on():
    path = serving.demo_paths((MODEL,))[MODEL]
    short = tempfile.mkdtemp(prefix="ws-two-")  # an ipc:// path must fit in 107 bytes: not under pytest's tmp_path
    sock = os.path.join(short, "hub.sock")
    try:
        with warmserve.Cluster([path], cpu_workers=1, bind="ipc://" + sock, start_timeout_s=90) as first:
            t0 = time.monotonic()
            with pytest.raises(InvalidArgumentError) as e:
                warmserve.Cluster([path], cpu_workers=1, bind="ipc://" + sock, start_timeout_s=90)
            assert time.monotonic() - t0 < 10  # refused before a worker started (before: it started and served)
            said = str(e.value)
            assert sock in said and "already listens" in said and "Fix:" in said, said
            assert os.path.exists(sock)
            assert first.generate(MODEL, [5, 17, 300], max_tokens=3, temperature=0).completion_tokens == 3
            assert [w["alive"] for w in first.stats()["workers"]] == [True]
    finally:
        shutil.rmtree(short, ignore_errors=True)
