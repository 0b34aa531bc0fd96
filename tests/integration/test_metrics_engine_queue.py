"""A `warmserve serve` whose engines run at most 2 sequences (--max-num-seqs 2), given 6 requests at once: /metrics
shows 2 running and 4 waiting (vLLM's num_requests_running / _waiting), the 4 in the controller's queue
(``warmserve_queue_length``), not in the engine's. Found in review: 6 running and 0 waiting, every request sent to an
instance counted as running though 4 waited in its engine's queue; and, in a later review, requests routed past an
engine's max_num_seqs waited in its queue where no other instance could take them, so route() now sends an instance no
more than its max_num_seqs (``InstanceState.max_seqs``) and the rest wait in the controller's queue. The waiting
gauge's count of an engine's queue (KV room): unit/controller/test_metrics_running_waiting.py."""

from __future__ import annotations

import threading
import time

import serving

MODEL = "llama-20m"
GAUGES = ("warmserve_running_requests", "warmserve_waiting_requests", "warmserve_inflight_requests",
          "warmserve_queue_length")


def _gauges(url: str) -> dict[str, float]:
    m = serving.metrics(url)
    return {g: m.get((g, (("model", MODEL),)), 0.0) for g in GAUGES}


def _until(url: str, cond, timeout_s: float) -> dict[str, float]:
    """The gauges of the first scrape that satisfies ``cond``, or of the last one."""
    deadline = time.monotonic() + timeout_s
    while True:
        g = _gauges(url)
        if cond(g) or time.monotonic() > deadline:
            return g
        time.sleep(0.1)


def test_requests_behind_max_num_seqs_are_waiting_not_running(tmp_path):
    proc, url = serving.start(tmp_path, models=(MODEL,), cpu_workers=1, args=("--max-num-seqs", "2"))
    statuses = []
    try:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        assert serving.post_json(url + "/v1/completions", body)[0] == 200  # the instance is up
        # 100 tokens: the first two run for 100 engine steps (seconds on one CPU thread, many heartbeats) while the
        # other four wait; 200 only made the three rounds twice as long. The four are sent once the two run, and
        # ask for 2 tokens: the rounds after the first take no time (found when the suite was timed: 18 s, three
        # rounds of 100 steps, 5 s each on the loaded machine, when six alike were sent at once).
        long = {**body, "max_tokens": 100, "ignore_eos": True}
        short = {**body, "max_tokens": 2, "ignore_eos": True}

        def send(req):
            return threading.Thread(target=lambda: statuses.append(
                serving.post_json(url + "/v1/completions", req)[0]))

        threads = [send(long) for _ in range(2)]
        for t in threads:
            t.start()
        first = _until(url, lambda g: g["warmserve_running_requests"] == 2, 30)
        assert first["warmserve_inflight_requests"] == 2 and first["warmserve_running_requests"] == 2, first
        threads += [send(short) for _ in range(4)]
        for t in threads[2:]:
            t.start()
        # Stats come with the worker's heartbeats (0.2 s here): the running count follows within a few.
        busy = _until(url, lambda g: g["warmserve_queue_length"] == 4 and g["warmserve_running_requests"] == 2,
                      30)
        assert busy == {"warmserve_running_requests": 2, "warmserve_waiting_requests": 4,
                        "warmserve_inflight_requests": 2, "warmserve_queue_length": 4}, busy
        for t in threads:
            t.join(180)
        assert statuses == [200] * 6
        idle = _until(url, lambda g: not any(g.values()), 10)
        assert not any(idle.values()), idle
    finally:
        serving.stop(proc)
