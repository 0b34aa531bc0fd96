"""Remote workers with ids of the operator's choosing are put on servers by the host they say they run on, not by
their ids. Found in review: ids such as rack-a-w0 and rack-b-w0 (docs/metrics.md suggests fixed ids) were read as
HOST-PID-DEVICE, so workers of two machines became one server "rack" and a tensor-parallel group could span the
two (its group store listens on loopback only)."""

import asyncio
import socket
import subprocess
import sys
import time

from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.launch import start_cluster

import serving

MODEL = "llama-20m"


def test_remote_workers_are_put_on_servers_by_their_host_not_their_id(tmp_path):
    path = serving.demo_paths((MODEL,))[MODEL]
    endpoint = f"ipc://{tmp_path}/workers.sock"
    cc = ControllerConfig(tick_s=0.2, heartbeat_interval_s=0.2, worker_timeout_s=5.0, drain_timeout_s=1,
                          bind=endpoint)
    cfg = ClusterConfig(models=(ModelSpec(path=path, name=MODEL),), devices=(), cpu_workers=0, remote_workers=2,
                        worker_start_timeout_s=60, controller=cc)
    # rack-b-w0 stands for a worker on another machine (--host-name); rack-a-w0 runs here and says so.
    workers = {"rack-a-w0": [], "rack-b-w0": ["--host-name", "machine-b"]}

    async def main():
        start = asyncio.ensure_future(start_cluster(cfg))
        procs = []
        try:
            while not (tmp_path / "workers.sock").exists():
                assert not start.done(), start.result()
                await asyncio.sleep(0.05)
            for wid, extra in workers.items():
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "warmserve", "worker", "--controller", endpoint, "--device", "cpu",
                     "--worker-id", wid, "--memory-gib", "0.5", "--threads", "1", *extra],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            deadline = time.monotonic() + 60
            while not start.done():
                for p in procs:  # a worker that exits ends the test now, with its reason
                    assert p.poll() is None, p.stderr.read()[-2000:]
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            ctl = start.result()
            try:
                hosts = {w.worker_id: w.host for w in ctl.gpu_workers}
                assert hosts == {"rack-a-w0": socket.gethostname(), "rack-b-w0": "machine-b"}, hosts
                servers = {w.worker_id: ctl.state.gpus[w.gpu_id].server_id for w in ctl.gpu_workers}
                assert servers["rack-a-w0"] != servers["rack-b-w0"], servers
            finally:
                await ctl.close(drain=False)
        finally:
            if not start.done():
                start.cancel()
                await asyncio.gather(start, return_exceptions=True)
            for p in procs:
                p.kill()
                p.wait()
                p.stderr.close()

    asyncio.run(main())
