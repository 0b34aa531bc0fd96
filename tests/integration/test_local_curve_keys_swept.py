"""A controller with CURVE on (--curve-dir) hands its local workers their keys as files in a temp dir. Found in
review (after the Ray launcher's): written once at the start and read anew at each local worker's restart, a temp
cleaner's sweep of a long-running server's /tmp made every later restart fail for ever; and kept on disk for the
controller's life, they were left there, the workers' secret key among them, by a controller killed with SIGKILL.
Now the files are off the disk once every local worker started has said Hello, and written again for each
restart."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import tempfile
import time

import pytest
import zmq.auth

import serving
from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.launch import start_cluster

MODEL = "llama-20m"
#: How long the killed worker's restart may take to join, seconds (a forked CPU worker: about 2 s here).
REJOIN_S = 20.0

pytestmark = pytest.mark.slow


def _config(keys: str) -> ClusterConfig:
    cc = ControllerConfig(tick_s=0.2, heartbeat_interval_s=0.2, worker_timeout_s=2.0, drain_timeout_s=1,
                          restart_backoff_s=0.2, curve_dir=keys)
    return ClusterConfig(models=(ModelSpec(path=serving.demo_paths((MODEL,))[MODEL], name=MODEL),),
                         cpu_workers=1, cpu_worker_memory_bytes=768 << 20, cpu_worker_threads=1,
                         worker_start_timeout_s=20.0, controller=cc)


def _secret_keys(tmp: str) -> list[str]:
    return glob.glob(os.path.join(tmp, "**", "*key_secret"), recursive=True)


def test_a_local_worker_restarts_with_its_curve_keys_after_a_temp_sweep_and_none_stays_on_disk(tmp_path,
                                                                                               monkeypatch):
    keys = tmp_path / "keys"
    (keys / "workers").mkdir(parents=True)
    zmq.auth.create_certificates(str(keys), "server")
    os.chmod(keys / "server.key_secret", 0o600)
    private_tmp = tmp_path / "tmp"  # the controller's $TMPDIR, which the test sweeps as a temp cleaner would
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    asyncio.run(_run(_config(str(keys)), str(private_tmp)))
    assert _secret_keys(str(private_tmp)) == []  # a normal stop leaves none either


async def _run(cfg: ClusterConfig, tmp: str) -> None:
    ctl = await start_cluster(cfg)
    try:
        async def ask():
            req = await ctl.submit(MODEL, [11, 12, 13], P.SamplingParams(max_tokens=2, ignore_eos=True))
            return sum([len(t) async for t in req])

        assert await asyncio.wait_for(ask(), 15) == 2
        # What a SIGKILL of the controller would leave: no secret key in $TMPDIR while it serves.
        assert _secret_keys(tmp) == [], os.listdir(tmp)
        for entry in os.listdir(tmp):  # the sweep (a no-op when the files are off the disk already)
            shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)
        (old,) = ctl.gpu_workers
        os.kill(old.pid, signal.SIGKILL)
        deadline = time.monotonic() + REJOIN_S
        back = None
        while back is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            back = next((w for w in ctl.gpu_workers if w.ready and w.pid != old.pid), None)
        assert back is not None, f"the killed local worker did not rejoin within {REJOIN_S:g} s"
        assert await asyncio.wait_for(ask(), 15) == 2
        assert _secret_keys(tmp) == [], "written again for the restart, the keys stayed on disk once it joined"
    finally:
        await ctl.close(drain=False)
