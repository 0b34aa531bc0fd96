"""What a scrape shows an operator before and after the first events: per-model counters and histograms exported
at 0 for every served model, request latency buckets past two minutes, and the dashboard's prewarm hit ratio over
every instance start."""

import json
import pathlib
from types import SimpleNamespace as NS

from prometheus_client.parser import text_string_to_metric_families

from warmserve.controller import views
from warmserve.controller.metrics import ControllerMetrics

DOCS = pathlib.Path(__file__).resolve().parents[3] / "docs"
PER_MODEL = ("warmserve_generation_tokens_total", "warmserve_prompt_tokens_total", "warmserve_prewarm_hits_total",
             "warmserve_prewarm_misses_total", "warmserve_prewarm_loading_starts_total",
             "warmserve_rerouted_requests_total", "warmserve_migrated_requests_total",
             "warmserve_instances_dedicated_total", "warmserve_ttft_seconds_count", "warmserve_tpot_seconds_count")


def _idle_ctl():
    """A controller as views.collect reads it, serving models a and b, before any request; its registry collects
    before each scrape, as the Controller's does."""
    ctl = NS(metrics=ControllerMetrics(), models={"a": None, "b": None},
             state=NS(queued=lambda m: 0, instances={}), instances={}, prewarms={}, hub=NS(workers={}),
             lost_workers={}, restarting={}, restarting_by_plan=set())
    ctl.metrics.registry.collectors.append(lambda: views.collect(ctl))
    return ctl


def _samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_per_model_counters_are_exported_at_zero_before_their_first_event():
    """Found in review: a per-model series appeared only with its first event, at 1, which increase()/rate() do not
    see (an absent series is no 0), and a sum of two by model had no value for a model lacking one of them: the
    dashboard's prewarm hit ratio showed nothing for a model whose starts were all prewarm hits."""
    ctl = _idle_ctl()
    got = _samples(ctl.metrics.registry.render())
    for model in ctl.models:
        for name in PER_MODEL:
            assert got.get((name, (("model", model),))) == 0.0, (name, model)


def test_request_latency_has_buckets_past_two_minutes():
    """Found in review: the end-to-end histogram's last finite bucket was 120 s, so every longer generation fell
    in +Inf and histogram_quantile answered 120 s for its p99 however long they ran."""
    m = ControllerMetrics()
    m.e2e.observe(300.0, model="a", outcome="length")
    got = _samples(m.registry.render())

    def bucket(le: str) -> float:
        return got[("warmserve_request_seconds_bucket", (("le", le), ("model", "a"), ("outcome", "length")))]

    assert bucket("120.0") == 0 and bucket("480.0") == 1


def test_dashboard_prewarm_hit_ratio_counts_every_instance_start():
    """Found in review: its denominator left out starts from a prewarm still loading, so a model started mostly
    from loading prewarms read near 100 % hits where bench replay's prewarm_hit_rate (hits over all starts) was
    low."""
    dash = json.loads((DOCS / "grafana-warmserve.json").read_text())
    (expr,) = [t["expr"] for p in dash["panels"] if p["title"].startswith("Prewarm hit ratio") for t in p["targets"]]
    denominator = expr.split(" / ", 1)[1]
    for name in ("prewarm_hits_total", "prewarm_misses_total", "prewarm_loading_starts_total"):
        assert f"warmserve_{name}" in denominator, name
