"""Live `autoscale` starts a new engine process for a cold start, as vanilla autoscaling does: the GPU's local worker
process is replaced by a fresh one (same device, same GPU id, nothing failed), and the measured start is in the
controller's stats and metrics. `warmserve`'s prewarm hits stay in-process; remote workers fall back to loading
into their running process."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from warmserve import Cluster
from warmserve.worker import forkserver

import serving
from net_ports import free_port

#: A fresh process imports torch and the engine and creates its page pool: far above the 35-130 ms a load into a
#: running worker takes on this machine, so a start above this cannot have been an in-process load.
FRESH_PROCESS_FLOOR_S = 0.4


def _pids(c: Cluster) -> dict[int, int]:
    """Policy GPU id -> pid of the worker process now serving it."""
    return {w.gpu_id: w.pid for w in list(c.controller.hub.workers.values()) if w.ready}


def _burst(c: Cluster, model: str, n: int) -> list:
    with ThreadPoolExecutor(n) as pool:
        futs = [pool.submit(c.generate, model, f"burst {i}", max_tokens=4, temperature=0, timeout_s=120)
                for i in range(n)]
        return [f.result() for f in futs]


def test_autoscale_cold_start_starts_a_new_worker_process_and_answers_every_request():
    with serving.demo_cluster(policy="autoscale") as c:
        before = _pids(c)
        assert len(before) == 2
        outs = _burst(c, "llama-20m", 8)
        assert all(o.completion_tokens >= 1 for o in outs), outs
        st = c.stats()
        starts = st["engine_starts"]
        assert starts and all(s["model"] == "llama-20m" for s in starts), starts
        after = _pids(c)
        # GPU ids are stable for the driver: the same ones, each now served by some process.
        assert set(after) == set(before) == {w["gpu_id"] for w in st["workers"]}
        procs = {w.gpu_id: w.proc for w in c.controller.hub.workers.values()}
        for s in starts:
            # a fresh interpreter, not a fork of the preloaded fork server (worker/forkserver.py)
            assert type(procs[s["gpu_id"]]) is subprocess.Popen, procs
            assert s["new_pid"] != s["old_pid"] and s["old_pid"] == before[s["gpu_id"]], (s, before)
            assert after[s["gpu_id"]] == s["new_pid"], (s, after)
            assert s["start_s"] > FRESH_PROCESS_FLOOR_S, s
            assert s["stop_s"] >= 0
        # The instance runs in the fresh process, on the GPU the policy placed it on.
        inst = [i for i in st["instances"] if i["model"] == "llama-20m"]
        assert inst and all(i["ready"] for i in inst)
        assert st["prewarm_misses"]["llama-20m"] >= 1 and st["prewarm_hits"]["llama-20m"] == 0
        m = c.controller.metrics
        assert m.engine_start.count() == len(starts)
        assert m.workers_lost.get() == 0, "a planned replacement is not a worker loss"
        assert m.rerouted.get(model="llama-20m") == 0
        # The replaced process is gone, not left running beside its successor.
        for s in starts:
            with pytest.raises(ProcessLookupError):
                os.kill(s["old_pid"], 0)
        # The cluster still serves both models afterwards.
        assert all(o.completion_tokens >= 1 for o in _burst(c, "qwen2-30m", 4))
        assert all(o.completion_tokens >= 1 for o in _burst(c, "llama-20m", 2))
        assert c.controller.metrics.workers_lost.get() == 0


def test_a_fresh_process_that_dies_at_start_loses_its_gpu_and_no_request(tmp_path, caplog):
    """Each worker's first fresh process exits at once: that GPU is lost after all (the ordinary restart brings the
    worker back as a new GPU, with back-off) and the burst is still answered in full, by a later start."""
    # An exited process is found by poll(), not by silence, so a long heartbeat timeout costs nothing here; the
    # harness's 2 s once counted a live worker lost while fresh processes imported torch on both cores (two CI
    # runs: workers_lost 4 where 2 processes had failed).
    caplog.set_level("WARNING", logger="warmserve.controller")
    with serving.demo_cluster(policy="autoscale", worker_timeout_s=10.0) as c:
        ctl = c.controller
        failed = []

        def failing_once(ident, real):
            def spawn():
                if ident not in failed:
                    failed.append(ident)
                    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
                return real()
            return spawn

        before = _pids(c)
        for ident, real in list(ctl.local_spawn.items()):
            ctl.local_spawn[ident] = failing_once(ident, real)
        outs = _burst(c, "llama-20m", 6)
        assert all(o.completion_tokens >= 1 for o in outs), outs
        st = c.stats()
        why = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert failed and ctl.metrics.workers_lost.get() == len(failed), why
        assert ctl.metrics.rerouted.get(model="llama-20m") == 0
        lost = set(before) - {w["gpu_id"] for w in st["workers"]}
        assert len(lost) == len(failed), (before, st["workers"], why)
        assert st["engine_starts"], "a later cold start got its fresh process"
        assert all(s["gpu_id"] not in lost for s in st["engine_starts"])


def test_warmserve_prewarm_hit_restarts_nothing(tmp_path):
    """History says qwen2-30m is busy now: its weights are prewarmed into a running worker, the first request
    starts from that prewarm, and no worker process is replaced."""
    serving.write_history(tmp_path / "history.csv", "qwen2-30m", "llama-20m")
    with serving.demo_cluster(policy="warmserve", history_path=str(tmp_path / "history.csv")) as c:
        pw = serving.wait_prewarmed(c, 60)
        assert pw and {p["model"] for p in pw} == {"qwen2-30m"}, pw
        before = _pids(c)
        outs = _burst(c, "qwen2-30m", 4)
        assert all(o.completion_tokens >= 1 for o in outs)
        st = c.stats()
        assert st["prewarm_hits"]["qwen2-30m"] >= 1, st
        assert _pids(c) == before
        assert st["engine_starts"] == [] and c.controller.metrics.engine_start.count() == 0


def test_autoscale_on_a_remote_worker_loads_into_its_running_process(tmp_path):
    """The controller cannot start a remote worker's process: the cold start falls back to loading into it."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "remote.log", "wb")
    # Forked from this process's fork server (worker/forkserver.py; a fresh interpreter where forking does not
    # work): to the controller a worker that joined by itself, which it did not start, as any remote one; without
    # a fresh interpreter's torch import (1.6 s of CPU).
    forkserver.prepare(60)
    remote = forkserver.popen_worker(
        [sys.executable, "-m", "warmserve", "worker", "--controller", endpoint, "--device", "cpu", "--memory-gib",
         "0.75", "--threads", "1", "--heartbeat-interval-s", "0.2", "--exit-with-parent", str(os.getpid())],
        stdout=log, stderr=log, env=dict(os.environ, OMP_NUM_THREADS="1"), forked=True)
    log.close()
    try:
        with serving.demo_cluster(policy="autoscale", cpu_workers=0, bind=endpoint, remote_workers=1) as c:
            before = _pids(c)
            assert list(before.values()) == [remote.pid]
            outs = _burst(c, "llama-20m", 4)
            assert all(o.completion_tokens >= 1 for o in outs)
            st = c.stats()
            assert st["prewarm_misses"]["llama-20m"] >= 1
            assert st["engine_starts"] == [] and _pids(c) == before and remote.poll() is None
    finally:
        if remote.poll() is None:
            remote.terminate()
            try:
                remote.wait(10)
            except subprocess.TimeoutExpired:
                remote.kill()
                remote.wait()
