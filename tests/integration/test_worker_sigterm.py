"""A local worker stopped with SIGTERM (a container stop, a pod eviction) while it generates: its requests resume
elsewhere after the tokens the client has and end as they would have, not with the worker's "abort"."""

import concurrent.futures
import os
import signal
import time

from warmserve.engine import SamplingParams

import serving

MODEL = "llama-20m"
PARAMS = SamplingParams(max_tokens=120, temperature=0.0, ignore_eos=True)
PROMPT = "the worker under this request gets SIGTERM"

cluster = serving.cluster_fixture(models=(MODEL,), cpu_workers=2, cpu_worker_memory_bytes=512 << 20,
                                  drain_timeout_s=5)


def _streaming_worker(ctl, min_tokens: int, timeout_s: float):
    """The worker whose request has streamed at least min_tokens (None when none did within timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in list(ctl.gpu_workers):
            if any(r.generated >= min_tokens for r in list(w.gens.values())):
                return w
        time.sleep(0.01)
    return None


def test_an_abort_the_controller_sent_loses_no_worker(cluster):
    """The worker answers the controller's own Abort with a finished "abort" too: that one is no sign of its end."""
    ctl = cluster.controller
    lost = ctl.metrics.workers_lost.get()
    stream = cluster.stream(MODEL, PROMPT, params=PARAMS)
    pieces = 0
    for _ in stream:
        pieces += 1
        if pieces == 5:
            break  # aborts it
    deadline = time.monotonic() + 5
    while any(w.gens for w in list(ctl.gpu_workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the worker's answer to the Abort has come in by now
    assert ctl.metrics.workers_lost.get() == lost
    assert all(w.alive for w in list(ctl.gpu_workers)) and len(ctl.gpu_workers) == 2


def test_a_request_on_a_sigtermed_worker_resumes_elsewhere_and_ends_normally(cluster):
    ctl = cluster.controller
    reference = cluster.generate(MODEL, PROMPT, params=PARAMS)
    assert (reference.finish_reason, reference.completion_tokens) == ("length", PARAMS.max_tokens)
    resumed_before = ctl.metrics.resumed.get(model=MODEL, why="worker_lost")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(cluster.generate, MODEL, PROMPT, params=PARAMS, timeout_s=120)
        victim = _streaming_worker(ctl, 10, 60)
        assert victim is not None, "the request did not start streaming"
        os.kill(victim.pid, signal.SIGTERM)
        out = fut.result(timeout=150)  # raises here what the generation raised

    assert out.finish_reason == "length", out
    assert out.completion_tokens == PARAMS.max_tokens
    # Greedy, resumed after the tokens the client had: the same text as the uninterrupted run.
    assert out.token_ids == reference.token_ids
    assert ctl.metrics.resumed.get(model=MODEL, why="worker_lost") == resumed_before + 1
    assert not victim.alive
    assert cluster.generate(MODEL, "still serving?", max_tokens=4).completion_tokens >= 1
