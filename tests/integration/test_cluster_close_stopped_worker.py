"""`Cluster.close()` with a local worker that is stopped (SIGSTOP: a hung host, a debugger, a frozen job): found in
review, the close waited 5 s for its Shutdown reply, 5 s more as if it were exiting gracefully, then 5 s after a
SIGTERM a stopped process cannot take, before the SIGKILL: 15.4 s."""

import os
import signal
import time

import serving

MODEL = "llama-20m"


def test_a_stopped_worker_does_not_hold_the_close_for_a_graceful_exit():
    with serving.demo_cluster(models=(MODEL,), cpu_workers=2, cpu_worker_memory_bytes=512 << 20) as c:
        assert c.generate(MODEL, [5, 17, 300], max_tokens=2, temperature=0).completion_tokens == 2
        stopped = c.controller.gpu_workers[0].pid
        os.kill(stopped, signal.SIGSTOP)
        t = time.monotonic()
        c.close(drain=False)
        took_s = time.monotonic() - t
    # the Shutdown wait (5 s) stays: a worker busy in a long step answers late; no graceful wait nor a SIGTERM's
    assert took_s < 10.0, f"close() took {took_s:.1f} s with a stopped worker"
    assert not serving.pid_alive(stopped)
