"""Workers load through the machine's host checkpoint cache (found in review: only the switch benchmark and the
memory tests used it; every worker read the checkpoint files, so a second worker's prewarm of a model did too).
`warmserve worker --host-cache-gib` turns it on, `ClusterConfig.host_cache_bytes` (`serve --host-cache-gib`) for
the workers a cluster starts; a worker's Stats carry the cache's counters."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from warmserve import protocol as P
from warmserve.worker.client import WorkerClient
from warmserve.worker.spawn import spawn_local_worker

import serving

MODEL = "llama-20m"


def _entries(root) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.endswith(".bin"))


def test_a_second_worker_loads_the_model_from_the_cache_the_first_filled(tmp_path):
    path = serving.demo_paths((MODEL,))[MODEL]
    root = tmp_path / "cache"
    args = ("--host-cache-gib", "0.5", "--host-cache-dir", str(root))
    workers = [spawn_local_worker("cpu", 0.25, 1, log_path=str(tmp_path / f"w{i}.log"), extra_args=args)
               for i in range(2)]
    clients = [WorkerClient(endpoint) for _, endpoint in workers]
    try:
        tokens = []
        for i, c in enumerate(clients):
            c.prewarm(path, MODEL)
            c.activate(MODEL)
            tokens.append([t for ev in c.generate(MODEL, [11, 12, 13], P.SamplingParams(max_tokens=4,
                                                                                         temperature=0.0))
                           for t in ev.token_ids])
        first, second = (c.stats().host_cache for c in clients)
        files = [n for n in os.listdir(path) if n.endswith(".safetensors")]
        assert first["fills"] == len(files) and first["hits"] == 0, first
        assert second["hits"] == len(files) and second["fills"] == 0, second
        assert 0 < second["bytes_from_cache"] <= first["bytes_filled"]  # its tensors; the fill: the whole files
        assert len(_entries(root)) == len(files)
        assert tokens[0] == tokens[1] and len(tokens[0]) == 4  # the same weights either way
    finally:
        for c in clients:
            c.close()
        for proc, _ in workers:
            proc.kill()
            proc.wait()


def test_a_worker_without_the_flag_runs_no_cache(tmp_path):
    proc, endpoint = spawn_local_worker("cpu", 0.25, 1, log_path=str(tmp_path / "w.log"))
    c = WorkerClient(endpoint)
    try:
        assert c.stats().host_cache == {}
    finally:
        c.close()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("args, says", [
    (["--host-cache-gib", "-1"], "--host-cache-gib must be a finite number >= 0"),
    (["--host-cache-gib", "nan"], "--host-cache-gib must be a finite number >= 0"),
    (["--host-cache-dir", "/tmp/nowhere"], "--host-cache-dir needs --host-cache-gib"),
])
def test_bad_cache_flags_are_refused_before_the_worker_starts(args, says):
    r = subprocess.run([sys.executable, "-m", "warmserve", "worker", *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_a_cluster_gives_its_workers_the_cache(tmp_path_factory, tmp_path):
    root = tmp_path / "cache"
    with serving.demo_cluster(tmp_path_factory, models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                              host_cache_bytes=256 << 20, host_cache_dir=str(root)) as c:
        assert c.generate(MODEL, "hello", max_tokens=2).completion_tokens >= 1
        assert _entries(root)  # the worker's load filled the cache
        # and Cluster.stats() shows the worker's cache counters (found in review: reported by the worker, shown
        # nowhere); they come with its stats reports, so a moment later
        deadline = time.monotonic() + 30
        while not c.stats()["workers"][0]["host_cache"].get("fills") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.stats()["workers"][0]["host_cache"]["fills"] >= 1, c.stats()["workers"]
