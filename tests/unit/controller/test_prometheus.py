import pytest

from warmserve.controller.metrics import ControllerMetrics, Histogram


def test_histogram_is_cumulative():
    h = Histogram("x_seconds", "help", ("model",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 5.0):
        h.observe(v, model="a")
    lines = h.render()
    assert 'x_seconds_bucket{model="a",le="0.1"} 1' in lines
    assert 'x_seconds_bucket{model="a",le="1"} 3' in lines
    assert 'x_seconds_bucket{model="a",le="+Inf"} 4' in lines
    assert 'x_seconds_count{model="a"} 4' in lines
    assert h.count(model="a") == 4


def test_registry_renders_every_series_and_checks_labels():
    m = ControllerMetrics()
    m.ttft.observe(0.2, model="m")
    m.prewarm_hits.inc(model="m")
    m.pages.set(7, worker="w0", role="kv")
    text = m.registry.render()
    for name in ("warmserve_ttft_seconds", "warmserve_tpot_seconds", "warmserve_queue_length", "warmserve_instances",
                 "warmserve_prewarm_hits", "warmserve_prewarm_misses", "warmserve_worker_pages"):
        assert f"# TYPE {name} " in text
    assert 'warmserve_prewarm_hits_total{model="m"} 1' in text
    assert 'warmserve_worker_pages{worker="w0",role="kv"} 7' in text
    with pytest.raises(ValueError):
        m.ttft.observe(1.0)
