"""The controller's Prometheus series, through ``prometheus_client`` (exposition by the reference library, so that
every sample is typed as the Prometheus parser expects: counters as ``NAME_total``, histograms as buckets).

Each ``ControllerMetrics`` owns its own ``CollectorRegistry`` (two controllers in one process do not share
series). Gauges that mirror controller state are filled by collect callbacks at scrape time (``Registry.render``).
The mapping of these names to vLLM's, for reusing its dashboards, is in docs/metrics.md.
"""

from __future__ import annotations

import time
from typing import Callable

import prometheus_client as prom

from warmserve.controller.queue_wait import DrainMeter

# TTFT and TPOT span sub-millisecond (a prewarm hit on a tiny model) to minutes (a cold start under a burst).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# A request's whole latency runs on past them: a long generation takes minutes at any TPOT, and no limit bounds its
# total (request_timeout_s bounds a wait for a token). vLLM's e2e tail, so that its p99 is not read as the top
# finite bucket (found in review: every request over 120 s fell in +Inf and histogram_quantile answered 120).
E2E_BUCKETS_S = LATENCY_BUCKETS_S + (240.0, 480.0, 960.0, 1920.0, 7680.0)
#: Every ``outcome`` a request ends with (``ControllerMetrics.request_done``): the engine's finish reasons, then the
#: controller's own (``executor.outcome_of``, a deadline, a lost worker).
OUTCOMES = ("stop", "length", "abort", "error", "timeout", "worker_lost")
#: The outcomes whose latency series are exported at 0 before their first request: the finished ones that a latency
#: query selects (and that keep vLLM's summed e2e series, prometheus-vllm-rules.yml, present from the start); not
#: every outcome, as each costs a histogram of 23 samples per model.
E2E_OUTCOMES = ("stop", "length")
#: The outcomes whose requests' TPOT is observed: those vLLM's ``request_success_total`` counts, for which it records
#: its per-request histograms at their finish (the e2e rules of prometheus-vllm-rules.yml select the same). Not
#: error, timeout or worker_lost: found in review, the requests that failed were observed too, so the TPOT that a
#: vLLM dashboard reads as that of the requests served took in those a lost worker or a deadline cut short.
TPOT_OUTCOMES = ("stop", "length", "abort")
#: Every ``why`` of warmserve_resumed_requests_total (the executor's migrations, losses.py, the co-served refusal):
#: each exported at 0 per model, as the outcomes are.
RESUME_REASONS = ("migrated", "worker_lost", "worker_drained", "rank_lost", "not_running", "no_room")
#: Every ``path`` of warmserve_tp_groups_built_total (controller/groups.py), exported at 0 from the start.
TP_GROUP_PATHS = ("prewarmed", "on_demand")
#: The exposition's Content-Type: the latest text format prometheus_client writes (0.0.4; 1.0.0 in newer releases).
CONTENT_TYPE = prom.CONTENT_TYPE_LATEST


class _Wrapped:
    """One prometheus_client metric with label values passed as keywords (``inc(model="m")``), and ``get`` and
    ``by_label`` for tests and /stats, read back from this metric's own ``collect()``: found in review, the
    registry's ``get_sample_value`` collects every series of every metric per call, and /stats asked it 3 times per
    model, so with 64 models one /stats held the event loop (heartbeats, ticks, requests) for 4-7 s."""

    cls: type = prom.Counter
    suffix = ""

    #: Whether ``child`` keeps each labelled child it found: prometheus_client's ``labels`` checks and sorts the
    #: names and takes a lock on every call, 5-6 calls a request (a review of the controller's CPU per request,
    #: 2026-12-07). Not for a metric whose children are removed (``Gauge.clear``): a kept child would then be gone
    #: from the exposition while it was still updated.
    cache_children = True

    def __init__(self, registry: "Registry", name: str, help_: str, labels: tuple[str, ...] = (), **kw):
        self.name, self.label_names = name, tuple(labels)
        self.metric = self.cls(name, help_, labels, registry=registry.prom, **kw)
        #: label values as strings, in ``label_names``' order -> the child (``cache_children``)
        self._children: dict[tuple[str, ...], object] = {}

    def child(self, labels: dict):
        if len(labels) != len(self.label_names) or not all(k in labels for k in self.label_names):
            raise ValueError(f"metric {self.name}: labels {sorted(labels)} != {sorted(self.label_names)}")
        if not self.label_names:
            return self.metric
        # the values as the exposition writes them, so True and 1 (equal keys) stay apart: "True" and "1"
        key = tuple(str(labels[k]) for k in self.label_names)
        found = self._children.get(key)
        if found is None:
            found = self.metric.labels(*key)
            if self.cache_children:
                self._children[key] = found
        return found

    def _sample(self, suffix: str, labels: dict) -> float:
        self.child(labels)  # checks the label names
        want = {k: str(v) for k, v in labels.items()}
        for family in self.metric.collect():
            for s in family.samples:
                if s.name == self.name + suffix and s.labels == want:
                    return s.value
        return 0.0

    def by_label(self, label: str, suffix: str = "_total") -> dict[str, float]:
        """Each value of ``label`` seen, to the sum of its samples named name + ``suffix``: one pass over this
        metric's series, however many models (a value never seen is absent, read it as 0)."""
        out: dict[str, float] = {}
        for family in self.metric.collect():
            for s in family.samples:
                if s.name == self.name + suffix and label in s.labels:
                    out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
        return out


class Counter(_Wrapped):
    cls = prom.Counter

    def inc(self, amount: float = 1.0, **labels) -> None:
        self.child(labels).inc(amount)

    def get(self, **labels) -> float:
        return self._sample("_total", labels)


class Gauge(_Wrapped):
    cls = prom.Gauge
    cache_children = False  # ``clear`` removes its children

    def set(self, value: float, **labels) -> None:
        self.child(labels).set(value)

    def clear(self) -> None:
        if self.label_names:
            self.metric.clear()

    def get(self, **labels) -> float:
        return self._sample("", labels)


class Histogram(_Wrapped):
    cls = prom.Histogram

    def __init__(self, registry, name, help_, labels=(), buckets=LATENCY_BUCKETS_S):
        super().__init__(registry, name, help_, labels, buckets=buckets)

    def observe(self, value: float, **labels) -> None:
        self.child(labels).observe(value)

    def count(self, **labels) -> int:
        return int(self._sample("_count", labels))


class Registry:
    """A CollectorRegistry plus the callbacks that set state gauges before each scrape."""

    def __init__(self):
        self.prom = prom.CollectorRegistry(auto_describe=True)
        self.collectors: list[Callable[[], None]] = []

    def render(self) -> str:
        for c in self.collectors:
            c()
        return prom.generate_latest(self.prom).decode()


class ControllerMetrics:
    """The series the controller exports at /metrics (names and their vLLM counterparts: docs/metrics.md)."""

    def __init__(self):
        r = self.registry = Registry()
        self.ttft = Histogram(r, "warmserve_ttft_seconds", "Time to first token, from submission to the controller.",
                              ("model",))
        self.queue_time = Histogram(r, "warmserve_request_queue_seconds", "Time a request waited in the "
                                    "controller before it was first sent to an instance (a cold start's wait "
                                    "included), from submission.", ("model",))
        self.tpot = Histogram(r, "warmserve_tpot_seconds", "Time per output token after the first: one mean per "
                              "request.", ("model",))
        self.e2e = Histogram(r, "warmserve_request_seconds", "Request latency, submission to its end, by outcome.",
                             ("model", "outcome"), buckets=E2E_BUCKETS_S)
        self.requests = Counter(r, "warmserve_requests", "Requests that reached a model, by how they ended "
                                "(stop, length, abort, error, timeout, ...); each choice of an n > 1 HTTP request "
                                "counts.", ("model", "outcome"))
        self.rejected = Counter(r, "warmserve_rejected_requests", "HTTP requests answered with an error status, "
                                "by status and route.", ("status", "route"))
        self.tokens = Counter(r, "warmserve_generation_tokens", "Tokens generated (decode) and kept: a request moved "
                              "to another worker counts the tokens it kept, not those its first worker computed and "
                              "were dropped.", ("model",))
        self.prompt_tokens = Counter(r, "warmserve_prompt_tokens", "Prompt tokens sent to instances (prefill), "
                                     "with a resumed request's tokens generated before.",
                                     ("model",))
        self.prewarm_hits = Counter(r, "warmserve_prewarm_hits", "Instances started from a prewarmed replica "
                                    "loaded in full.",
                                    ("model",))
        self.prewarm_misses = Counter(r, "warmserve_prewarm_misses", "Instances started with a cold load.", ("model",))
        self.prewarm_loading_starts = Counter(
            r, "warmserve_prewarm_loading_starts", "Instances started from a prewarm still loading (they wait for the "
            "rest of its copy; neither a hit nor a cold load).", ("model",))
        self.rerouted = Counter(r, "warmserve_rerouted_requests", "Requests started over after a worker loss, "
                                "after their worker's drain ran out of time (those still on it when it left), after "
                                "their tensor-parallel instance lost a rank, after their worker no longer ran "
                                "their instance when one of them got there, or after a co-served instance had no "
                                "room for them (sent on to an instance serving alone).", ("model",))
        self.migrated = Counter(r, "warmserve_migrated_requests", "Requests moved off an instance the policy stopped "
                                "at once for a model that wanted its GPUs (Migrate), to start over elsewhere.",
                                ("model",))
        self.resumed = Counter(r, "warmserve_resumed_requests", "Requests that had streamed tokens and left their "
                               "instance to go on elsewhere after them, by why: migrated (the instance stopped for a "
                               "model that wanted its GPUs), worker_lost, worker_drained (its drain's time ran out), "
                               "rank_lost (their tensor-parallel instance "
                               "lost a rank), not_running (their worker no longer ran their instance) or no_room (a "
                               "co-served instance could no longer hold them).",
                               ("model", "why"))
        self.workers_lost = Counter(r, "warmserve_workers_lost", "Workers declared lost.")
        self.workers_drained = Counter(r, "warmserve_workers_drained", "Workers that began a drain (sent SIGTERM: "
                                       "no new work, their requests in flight finish there).")
        self.dedicated = Counter(r, "warmserve_instances_dedicated", "Co-served instances turned into dedicated "
                                 "ones in place (their co-residents left; the KV cap rose, nothing was copied).",
                                 ("model",))
        self.tp_groups_built = Counter(r, "warmserve_tp_groups_built", "Process groups of tensor-parallel "
                                       "instances built, ahead of use (prewarmed) or on a start's path (on_demand).",
                                       ("path",))
        for path in TP_GROUP_PATHS:  # at 0 before the first build, so that increase() sees it
            self.tp_groups_built.child({"path": path})
        self.engine_start = Histogram(r, "warmserve_engine_start_seconds", "A fresh local worker process started "
                                      "for a cold start without a warm engine (autoscale), from its spawn until "
                                      "it is admitted and can load weights.")
        self.queue = Gauge(r, "warmserve_queue_length", "Requests waiting in the controller for an instance.",
                           ("model",))
        self.inflight = Gauge(r, "warmserve_inflight_requests", "Requests sent to instances and not ended: running "
                              "in an engine's batch or waiting in its queue.", ("model",))
        self.running = Gauge(r, "warmserve_running_requests", "Requests in an engine's running batch (as workers "
                             "last reported, with their heartbeats).", ("model",))
        self.waiting = Gauge(r, "warmserve_waiting_requests", "Requests waiting: in the controller's queue, or sent "
                             "to an instance and waiting in its engine's queue.", ("model",))
        self.instances = Gauge(r, "warmserve_instances", "Running instances.", ("model",))
        self.prewarmed = Gauge(r, "warmserve_prewarmed_replicas", "Prewarmed weight sets resident on workers.",
                               ("model",))
        self.workers = Gauge(r, "warmserve_workers", "Workers by state: ready, draining (sent SIGTERM), restarting "
                             "(a local one that left by plan, started again), or lost and not back yet.", ("state",))
        self.pages = Gauge(r, "warmserve_worker_pages", "Pages of each worker's pool by role.", ("worker", "role"))
        self.worker_memory = Gauge(r, "warmserve_worker_memory_bytes", "Resident memory of each worker's process by "
                                   "kind (rss; its parts anon, file, shmem: the pool's touched pages), as it last "
                                   "reported.", ("worker", "kind"))
        self.kv_usage = Gauge(r, "warmserve_kv_cache_usage_ratio", "KV blocks holding tokens / KV blocks the "
                              "instance can hold (0..1), per running instance.", ("worker", "model"))
        self.worker_kv_usage = Gauge(r, "warmserve_worker_kv_cache_usage_ratio", "KV blocks holding tokens / KV "
                                     "blocks its instances can hold (0..1), per worker.", ("worker",))
        self.preemptions = Gauge(r, "warmserve_kv_preemptions", "Sequences preempted (KV full, recomputed later) "
                                 "since each running instance started.", ("worker", "model"))
        self.decode_step = Gauge(r, "warmserve_decode_step_seconds", "Recent mean wall time of one decode step of "
                                 "each running instance, as its engine measured it (co-serving admits by these: "
                                 "co-served engines on one worker step in turn). Absent until it has decoded.",
                                 ("worker", "model"))
        #: Not a series: the recent first sends of each model, the drain rate of its queue (``queue_wait``), fed
        #: where the queue time is observed, the one place every request's first send passes.
        self.drain = DrainMeter()
        self.decode_batch = Gauge(r, "warmserve_decode_batch", "Recent mean of the sequences in each running "
                                  "instance's decode steps (beside warmserve_decode_step_seconds).",
                                  ("worker", "model"))

    def model_series(self, model: str) -> None:
        """Export a model's per-model counters and histograms at 0 before their first event. Found in
        review: a series that first appeared at 1 hid that event from increase()/rate(), and the dashboard's prewarm
        hit ratio, a sum of hits and misses by model, had no value for a model lacking either series."""
        for s in (self.tokens, self.prompt_tokens, self.prewarm_hits, self.prewarm_misses, self.prewarm_loading_starts,
                  self.rerouted, self.migrated, self.dedicated, self.ttft, self.queue_time, self.tpot):
            s.child({"model": model})
        # Found in a fault run: warmserve_requests_total{outcome="worker_lost"} first appeared at 1, so an alert on
        # its increase() missed the first request a worker loss failed (and a rate of successes, the first stop).
        for outcome in OUTCOMES:
            self.requests.child({"model": model, "outcome": outcome})
        for outcome in E2E_OUTCOMES:
            self.e2e.child({"model": model, "outcome": outcome})
        for why in RESUME_REASONS:
            self.resumed.child({"model": model, "why": why})

    def tokens_pushed(self, req, generated_before: int, first_token_before_s: float | None) -> None:
        """Tokens of a request reached the controller (``Req.push``; its counts before are given). Counted now, as
        vLLM counts each step's tokens (found in review: they were counted when the request ended, so rate() showed
        nothing of a long generation while it ran, then all of it at once). Its TTFT is observed at its first token,
        once per request (found in review: it was observed at the request's end, so a scrape during a long
        generation had no TTFT of the requests still generating)."""
        if req.generated > generated_before:
            self.tokens.inc(req.generated - generated_before, model=req.model)
        if first_token_before_s is None and req.first_token_s is not None:
            self.ttft.observe(req.first_token_s - req.arrival_s, model=req.model)

    def first_sent(self, req, queue_s: float) -> None:
        """A request reached an instance for the first time, ``queue_s`` after its arrival: kept on it (the access
        log's queue_ms) and observed, once per request as vLLM observes its queue time, and only for requests sent:
        as for TTFT, one that timed out or was aborted while queued is not observed (its outcome counts it)."""
        req.queue_s = queue_s
        self.queue_time.observe(queue_s, model=req.model)
        self.drain.started(req.model, req.arrival_s + queue_s)

    def request_done(self, req, outcome: str, now_s: float | None = None) -> None:
        """Count a request that ended: its outcome (a stop string's abort counts as "stop"), and latency (its
        tokens were counted, and its TTFT observed, as they arrived: ``tokens_pushed``); its TPOT for the
        ``TPOT_OUTCOMES`` only."""
        if outcome == "abort" and getattr(req, "abort_reason", "") in ("stop", "error"):
            outcome = req.abort_reason
        m = req.model
        self.requests.inc(model=m, outcome=outcome)
        end = req.last_token_s if req.last_token_s is not None and outcome in ("stop", "length") else None
        self.e2e.observe((end or (now_s if now_s is not None else time.monotonic())) - req.arrival_s,
                         model=m, outcome=outcome)
        if outcome in TPOT_OUTCOMES and req.first_token_s is not None and req.generated > 1:
            self.tpot.observe((req.last_token_s - req.first_token_s) / (req.generated - 1), model=m)

    def rejected_request(self, status: int, route: str) -> None:
        self.rejected.inc(status=status, route=route)
