"""A small Prometheus text-format registry (exposition format 0.0.4): counters, gauges and histograms with labels.

Written here rather than pulled in as a dependency: the controller needs a dozen series and nothing else from a
client library. Gauges that mirror controller state are filled by a collect callback at scrape time.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable

# TTFT and TPOT span sub-millisecond (a prewarm hit on a tiny model) to minutes (a cold start under a burst).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x)) if abs(x) < 1e15 else repr(float(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help_, tuple(labels)

    def _key(self, labels: dict | None) -> tuple:
        labels = labels or {}
        if set(labels) != set(self.label_names):
            raise ValueError(f"metric {self.name}: labels {sorted(labels)} != {sorted(self.label_names)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels):
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}_total{_labels(self.label_names, k)} {_num(v)}"
                                for k, v in sorted(self.values.items())]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.values: dict[tuple, float] = {}

    def set(self, value: float, **labels):
        self.values[self._key(labels)] = float(value)

    def clear(self):
        self.values.clear()

    def get(self, **labels) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}"
                                for k, v in sorted(self.values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = (), buckets=LATENCY_BUCKETS_S):
        super().__init__(name, help_, labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple, list] = {}  # key -> [per-bucket counts..., +Inf count], sum

    def observe(self, value: float, **labels):
        key = self._key(labels)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [[0] * (len(self.buckets) + 1), 0.0]
        s[0][bisect.bisect_left(self.buckets, value)] += 1
        s[1] += value

    def count(self, **labels) -> int:
        s = self.series.get(self._key(labels))
        return sum(s[0]) if s else 0

    def render(self) -> list[str]:
        out = self.header()
        for key, (counts, total) in sorted(self.series.items()):
            acc = 0
            for b, c in zip(self.buckets + (math.inf,), counts):
                acc += c
                le = 'le="' + _num(b) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {acc}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {acc}")
        return out


class Registry:
    def __init__(self):
        self.metrics: list[_Metric] = []
        self.collectors: list[Callable[[], None]] = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        for c in self.collectors:
            c()
        lines: list[str] = []
        for m in self.metrics:
            lines += m.render()
        return "\n".join(lines) + "\n"


class ControllerMetrics:
    """The series the controller exports at /metrics."""

    def __init__(self):
        r = self.registry = Registry()
        self.ttft = r.add(Histogram("warmserve_ttft_seconds", "Time to first token, from arrival.", ("model",)))
        self.tpot = r.add(Histogram("warmserve_tpot_seconds", "Time per output token after the first.", ("model",)))
        self.e2e = r.add(Histogram("warmserve_request_seconds", "Request latency, arrival to last token.", ("model",)))
        self.requests = r.add(Counter("warmserve_requests", "Finished requests by outcome.", ("model", "outcome")))
        self.tokens = r.add(Counter("warmserve_generated_tokens", "Tokens generated.", ("model",)))
        self.prompt_tokens = r.add(Counter("warmserve_prompt_tokens", "Prompt tokens received.", ("model",)))
        self.prewarm_hits = r.add(Counter("warmserve_prewarm_hits", "Instances started from a prewarmed replica.", ("model",)))
        self.prewarm_misses = r.add(Counter("warmserve_prewarm_misses", "Instances started with a cold load.", ("model",)))
        self.rerouted = r.add(Counter("warmserve_rerouted_requests", "Queued requests re-routed after a worker loss.", ("model",)))
        self.workers_lost = r.add(Counter("warmserve_workers_lost", "Workers declared lost.", ()))
        self.queue = r.add(Gauge("warmserve_queue_length", "Requests waiting for an instance.", ("model",)))
        self.inflight = r.add(Gauge("warmserve_inflight_requests", "Requests running on instances.", ("model",)))
        self.instances = r.add(Gauge("warmserve_instances", "Running instances.", ("model",)))
        self.prewarmed = r.add(Gauge("warmserve_prewarmed_replicas", "Prewarmed weight sets resident on workers.", ("model",)))
        self.workers = r.add(Gauge("warmserve_workers", "Workers by state.", ("state",)))
        self.pages = r.add(Gauge("warmserve_worker_pages", "Pages of each worker's pool by role.", ("worker", "role")))
