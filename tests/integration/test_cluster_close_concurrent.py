"""`Cluster.close()` from several threads at once, and the finalizer of a Cluster never closed run on the
controller's own loop thread: each stops the controller and the worker processes, and none blocks the loop.

Found in review: a second close() made while the first was draining returned at once, the workers still running;
and a Cluster whose last reference went on the loop's thread (a cancelled agenerate's task ending there) ran its
finalizer there, which stalled the loop for drain_timeout_s + 30 s waiting on itself, then failed with "cannot join
current thread" and left the workers running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

from warmserve import SamplingParams

import serving

MODEL = "llama-20m"


def test_a_close_made_while_another_drains_returns_only_once_the_workers_have_stopped():
    before = set(serving.worker_pids(os.getpid()))
    errors: list[BaseException] = []
    results = []

    def run(fn) -> threading.Thread:
        def target():
            try:
                fn()
            except BaseException as e:  # reaches the test's thread through `errors`
                errors.append(e)

        t = threading.Thread(target=target, daemon=True)
        t.start()
        return t

    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20) as c:
        workers = set(serving.worker_pids(os.getpid())) - before
        assert workers, "the cluster started no worker process"
        generating = run(lambda: results.append(c.generate(MODEL, [5, 17, 300], params=params)))
        deadline = time.monotonic() + 30
        while not any(i["in_flight"] for i in c.stats()["instances"]):  # the first close has a request to drain
            assert time.monotonic() < deadline and not errors, errors
            time.sleep(0.02)
        first = run(c.close)
        while not c._closed:
            assert time.monotonic() < deadline and not errors, errors
            time.sleep(0.005)
        c.close()
        alive = [p for p in workers if serving.pid_alive(p)]
        loop_running = c._thread.is_alive()
        first.join(60)
        generating.join(60)
    assert not errors, errors
    assert not alive, f"the second close() returned with workers {alive} still running"
    assert not loop_running, "the second close() returned with the controller's loop still running"
    assert results and results[0].completion_tokens == 60, "the first close did not let the request finish"


SCRIPT = textwrap.dedent("""
    import json, os, sys, threading, time, weakref
    import warmserve
    from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec

    sys.path.insert(0, sys.argv[2])
    from serving import worker_pids

    def children():  # the local workers: forked by the process's fork server, which outlives the Cluster a while
        return worker_pids(os.getpid())

    cfg = ClusterConfig(models=(ModelSpec(path=sys.argv[1]),), cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                        cpu_worker_threads=1, controller=ControllerConfig(drain_timeout_s=2))
    c = warmserve.Cluster(None, config=cfg)
    c.generate("llama-20m", "Hi", max_tokens=2)
    workers = children()
    loop, thread = c._loop, c._thread
    ran_on = []
    weakref.finalize(c, lambda: ran_on.append(threading.current_thread().name))
    box = [c]
    del c
    dropped = threading.Event()

    def drop():
        box.clear()  # the last reference: the Cluster's finalizer runs here, on the loop's thread
        dropped.set()

    t0 = time.monotonic()
    loop.call_soon_threadsafe(drop)
    dropped.wait(10)
    drop_s = time.monotonic() - t0
    deadline = time.monotonic() + 20
    while any(p in children() for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    thread.join(max(0.0, deadline - time.monotonic()))
    print(json.dumps({"drop_s": drop_s if dropped.is_set() else None, "ran_on": ran_on, "workers": workers,
                      "alive": [p for p in workers if p in children()], "loop_running": thread.is_alive()}),
          flush=True)
""")


def test_a_cluster_collected_on_its_own_loop_thread_stops_without_blocking_that_loop(tmp_path):
    path = serving.demo_paths((MODEL,))[MODEL]
    script = tmp_path / "drop_on_loop.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), path, os.path.dirname(serving.__file__)], capture_output=True,
                         text=True, timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ran_on"] == ["warmserve-controller"], r
    assert r["workers"], "the cluster started no worker process"
    assert r["drop_s"] is not None and r["drop_s"] < 5, f"the finalizer blocked the controller's loop: {r}"
    assert not r["alive"], f"workers {r['alive']} still run 20 s after the Cluster was collected"
    assert not r["loop_running"], "the controller's loop still runs 20 s after the Cluster was collected"
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr[-3000:]
