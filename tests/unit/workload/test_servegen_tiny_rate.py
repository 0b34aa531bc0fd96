"""A total rate so small that a window's share of its requests in the span rounds to none keeps its scale. Found in
review: the scale's refining round then expected 0 requests/s and reset the scale to 1, so `warmserve bench replay
--models 1 --rate 0.0001 --duration-s 10` replayed its client's trace unscaled: 1,279 requests at 128 rps."""

import pytest

from warmserve.workload.recipes import servegen_workload


@pytest.mark.parametrize("rate_rps", [1e-4, 1e-6])
def test_a_tiny_total_rate_replays_about_that_rate(rate_rps):
    w = servegen_workload(1, duration_s=10, pre_s=600, history_days=7, total_rate_rps=rate_rps, seed=0,
                          repeat_days=6)
    assert len(w.trace.model) <= 2, len(w.trace.model)  # 0.001 requests expected in the span
    assert w.meta["rate_scale"] < 1e-5 and w.meta["expected_rate_rps"] == pytest.approx(rate_rps, rel=0.05)


def test_the_rate_a_span_can_hold_is_scaled_as_before():
    w = servegen_workload(1, duration_s=10, pre_s=600, history_days=7, total_rate_rps=1.0, seed=0, repeat_days=6)
    assert 0 < len(w.trace.model) < 20 and w.meta["expected_rate_rps"] == pytest.approx(1.0, rel=0.05)
