"""What /metrics series count on a live `warmserve serve`, against their sentences in docs/metrics.md (review of the
documented meanings; test_metrics_docs_match.py checks names, types and labels). Found in review: a request that
streamed on a worker sent SIGTERM (a drain: "their requests in flight finish there") read 0 in
warmserve_inflight_requests and warmserve_running_requests for as long as it ran there, as the drain takes the
worker's instances out of the policy's state at once; and docs/metrics.md said such a request was rerouted once
`controller.drain_timeout_s` ran out, a setting the workers' drain does not read (it is the worker's
`--drain-timeout-s`): with it at 1 s here, the request finishes on the draining worker. And the recording rule for
vLLM's vllm:e2e_request_latency_seconds summed every outcome, where vLLM observes it for the requests its
request_success_total counts (stop, length, abort): a request a worker loss failed was in one and not the other."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import threading
import time
import urllib.request

import yaml

import serving

MODEL = "llama-20m"

DRAIN_TIMEOUT_S = 1.0  # controller.drain_timeout_s: the controller's own drain at shutdown, not its workers'
server = serving.server_fixture("metrics_meanings", models=(MODEL,), cpu_workers=2,
                                cpu_worker_memory_bytes=512 << 20, drain_timeout_s=DRAIN_TIMEOUT_S,
                                max_worker_losses_per_request=1)  # a SIGKILL fails what runs there: worker_lost
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
DOC = DOCS / "metrics.md"


def _value(url: str, name: str, **labels) -> float:
    return sum(v for (n, ls), v in serving.metrics(url).items()
               if n == name and all(dict(ls).get(k) == str(x) for k, x in labels.items()))


def _pid_of(server_pid: int, worker_id: str) -> int:
    """The local worker process whose command line names ``worker_id``."""
    for pid in serving.worker_pids(server_pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if worker_id.encode() in f.read():
                return pid
    raise AssertionError(f"no process of {worker_id} among {serving.worker_pids(server_pid)}")


def _stream(url: str, body: dict, events: list, first: threading.Event) -> None:
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            for line in r:
                if line.startswith(b"data: {"):
                    events.append(json.loads(line[6:]))
                    if len(events) >= 10:
                        first.set()
    finally:
        first.set()


def _signal_its_worker(url: str, proc, body: dict, sig: int) -> tuple[threading.Thread, list]:
    """Stream ``body`` on a thread; once 10 events came, send ``sig`` to the one worker it runs on. Returns the
    thread and its list of events, which it goes on filling."""
    events, first = [], threading.Event()
    t = threading.Thread(target=_stream, args=(url, body, events, first), daemon=True)
    t.start()
    assert first.wait(60) and len(events) >= 10, events
    _, st = serving.get_json(url + "/stats")
    holder = [w["worker_id"] for w in st["workers"] if w["in_flight"]]
    assert len(holder) == 1, st["workers"]
    os.kill(_pid_of(proc.pid, holder[0]), sig)
    return t, events


def test_n_choices_count_each_choice_and_its_prompt_and_tokens(server):
    url, _, _ = server
    assert serving.post_json(url + "/v1/completions", {"model": MODEL, "prompt": "warm", "max_tokens": 2})[0] == 200
    before = serving.metrics(url)
    status, body = serving.post_json(url + "/v1/completions", {"model": MODEL, "prompt": "three choices of four",
                                                               "max_tokens": 4, "ignore_eos": True, "n": 3})
    assert status == 200, body
    after = serving.metrics(url)

    def moved(name, **labels):
        key = (name, tuple(sorted({"model": MODEL, **labels}.items())))
        return after.get(key, 0) - before.get(key, 0)

    prompt = body["usage"]["prompt_tokens"]  # one prompt in usage; each choice prefills it
    assert moved("warmserve_requests_total", outcome="length") == 3
    assert moved("warmserve_prompt_tokens_total") == 3 * prompt
    assert moved("warmserve_generation_tokens_total") == body["usage"]["completion_tokens"] == 12
    assert moved("warmserve_ttft_seconds_count") == moved("warmserve_tpot_seconds_count") == 3
    assert moved("warmserve_request_seconds_count", outcome="length") == 3


def test_a_request_streaming_on_a_draining_worker_is_in_flight_and_running(server):
    url, proc, _ = server
    assert serving.wait_idle(url, 30) == []
    counters = ("warmserve_workers_drained_total", "warmserve_workers_lost_total", "warmserve_rerouted_requests_total",
                "warmserve_resumed_requests_total", "warmserve_prompt_tokens_total")
    before = {name: _value(url, name) for name in counters}
    t, events = _signal_its_worker(url, proc, {"model": MODEL, "prompt": "a long one", "max_tokens": 400,
                                               "ignore_eos": True}, signal.SIGTERM)
    sigterm_s = time.monotonic()
    seen = []  # (draining workers, in flight, running) while the stream runs on the draining worker
    while t.is_alive():
        m = serving.metrics(url)
        g = {n: v for (n, ls), v in m.items() if dict(ls) in ({"model": MODEL}, {"state": "draining"})}
        if g.get("warmserve_workers") == 1 and t.is_alive():
            seen.append((g["warmserve_inflight_requests"], g["warmserve_running_requests"],
                         g["warmserve_waiting_requests"]))
        time.sleep(0.1)
    t.join(60)
    ran_s = time.monotonic() - sigterm_s
    assert events[-1]["choices"][0]["finish_reason"] == "length", events[-1]
    moved = {name: _value(url, name) - before[name] for name in counters}
    # It outlasted controller.drain_timeout_s on its draining worker and finished there: one drain, no loss, no
    # reroute or resumption, one prefill (docs/metrics.md: warmserve_rerouted_requests_total, _workers_drained_)
    assert ran_s > 2 * DRAIN_TIMEOUT_S, ran_s
    assert moved == {"warmserve_workers_drained_total": 1, "warmserve_workers_lost_total": 0,
                     "warmserve_rerouted_requests_total": 0, "warmserve_resumed_requests_total": 0,
                     "warmserve_prompt_tokens_total": moved["warmserve_prompt_tokens_total"]}, moved
    assert 0 < moved["warmserve_prompt_tokens_total"] < 16, moved  # "a long one": its prompt, once
    assert seen, "the drain was never seen in warmserve_workers{state=\"draining\"}"
    # sent to an instance and not ended: 1 all along; running as its worker last reported it (a heartbeat behind)
    assert all(inflight == 1 for inflight, _, _ in seen), seen
    assert seen[-1] == (1, 1, 0), seen
    # and back to 0 once it ended, with the worker restarted
    deadline = time.monotonic() + 30
    while _value(url, "warmserve_workers", state="ready") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _value(url, "warmserve_workers", state="ready") == 2
    for name in ("warmserve_inflight_requests", "warmserve_running_requests", "warmserve_waiting_requests",
                 "warmserve_queue_length"):
        assert _value(url, name, model=MODEL) == 0, name


def test_the_doc_names_the_drain_timeout_that_reroutes():
    """The rerouted row names the worker's --drain-timeout-s, not controller.drain_timeout_s (which the test above
    shows does not bound a worker's drain)."""
    rows = DOC.read_text().splitlines()
    row = next(line for line in rows if line.startswith("| `warmserve_rerouted_requests_total`"))
    assert "`--drain-timeout-s`" in row and "not `controller.drain_timeout_s`" in row, row


def _rule_sum(metrics: dict, expr: str, series: str) -> float:
    """What a recording rule's ``expr`` sums of ``series`` at one scrape: the samples its ``outcome`` matcher (=~)
    selects, every outcome without one (label_replace and ``sum without (outcome)`` keep the total)."""
    sel = re.search(re.escape(series) + r'\{outcome=~"([^"]*)"\}', expr)
    pattern = sel.group(1) if sel else ".*"
    assert series in expr, expr
    return sum(v for (n, ls), v in metrics.items() if n == series and re.fullmatch(pattern, dict(ls)["outcome"]))


def test_the_vllm_e2e_rule_counts_the_requests_vllm_counts(server):
    url, proc, _ = server
    lost = _value(url, "warmserve_requests_total", outcome="worker_lost")
    t, events = _signal_its_worker(url, proc, {"model": MODEL, "prompt": "lost", "max_tokens": 1500,
                                               "ignore_eos": True}, signal.SIGKILL)
    t.join(60)
    assert "error" in events[-1], events[-1]  # failed after its 200, as an SSE event
    m = serving.metrics(url)
    assert _value(url, "warmserve_requests_total", outcome="worker_lost") == lost + 1
    rules = {r["record"]: r["expr"] for g in yaml.safe_load((DOCS / "prometheus-vllm-rules.yml").read_text())["groups"]
             for r in g["rules"]}
    # vLLM (v1/metrics/loggers.py) observes e2e latency and counts request_success_total in one loop, per finished
    # request: the two agree at every scrape
    assert (_rule_sum(m, rules["vllm:e2e_request_latency_seconds_count"], "warmserve_request_seconds_count")
            == _rule_sum(m, rules["vllm:request_success_total"], "warmserve_requests_total"))
