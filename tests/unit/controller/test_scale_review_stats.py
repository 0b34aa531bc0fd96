"""/stats with many models (found in the many-models review): its per-model prewarm counters were read through the
registry's ``get_sample_value``, which collects every series of every metric on each call, 3 calls per model. With
64 models of 125 series each, one /stats took 4-7 s of the controller's event loop (heartbeats, ticks and requests
waited). Now each counter is read once per /stats: the registry is never collected whole."""

import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from warmserve.controller import views
from warmserve.controller.metrics import ControllerMetrics

N_MODELS = 64


def _ctl(models: list[str]) -> SimpleNamespace:
    metrics = ControllerMetrics()
    for m in models:
        metrics.model_series(m)
    return SimpleNamespace(hub=SimpleNamespace(workers={}), state=SimpleNamespace(
        instances={}, prewarms={}, queues={m: [] for m in models}), instances={}, prewarms={},
        groups=SimpleNamespace(views=lambda: []), metrics=metrics, models=dict.fromkeys(models))


def test_stats_of_64_models_reads_no_whole_registry_per_model(monkeypatch):
    models = [f"m{i:02d}" for i in range(N_MODELS)]
    ctl = _ctl(models)
    ctl.metrics.prewarm_hits.inc(model=models[3])
    ctl.metrics.prewarm_misses.inc(2, model=models[5])
    whole = []
    real = CollectorRegistry.collect
    monkeypatch.setattr(CollectorRegistry, "collect", lambda self: (whole.append(1), real(self))[1])
    t0 = time.perf_counter()
    s = views.stats(ctl)
    took = time.perf_counter() - t0
    assert whole == [], f"/stats collected the whole registry {len(whole)} times for {N_MODELS} models"
    assert s["prewarm_hits"] == {m: (1.0 if m == models[3] else 0.0) for m in models}
    assert s["prewarm_misses"][models[5]] == 2.0 and sum(s["prewarm_misses"].values()) == 2.0
    assert set(s["prewarm_loading_starts"]) == set(models) and not any(s["prewarm_loading_starts"].values())
    assert took < 0.5, took


def test_a_counters_get_reads_its_own_series_only():
    ctl = _ctl(["a", "b"])
    assert ctl.metrics.prewarm_hits.get(model="b") == 0.0
    ctl.metrics.prewarm_misses.inc(model="b")
    assert ctl.metrics.prewarm_misses.get(model="b") == 1.0
    assert ctl.metrics.prewarm_misses.by_label("model") == {"a": 0.0, "b": 1.0}
