"""``summarize`` on a hand-built set of four requests: every summary figure against its hand-computed value."""

import math

import numpy as np
import pytest

from warmserve.sim.metrics import RunResult, pct, summarize

STARTS = {"total": 4, "hit": 1, "loading": 1, "cold": 2}
# request 0: answered at 0.5 s, done; 1: answered after 2 s (over its 1 s SLO), one token; 2: never answered;
# 3: answered within its SLO, done after two more tokens
ARRIVAL = np.array([0.0, 1.0, 2.0, 3.0])
FIRST = np.array([0.5, 3.0, np.nan, 3.2])
FINISH = np.array([2.5, 5.0, np.nan, 5.2])
MODEL = np.array([0, 0, 1, 1], dtype=np.int32)
OUTPUT = np.array([5, 1, 4, 3], dtype=np.int64)
SLO = np.array([1.0, 1.0, 0.5, 0.5])


def _run(**kw):
    args = dict(duration_s=10.0, end_s=12.0, gpu_seconds=6.0, starts=STARTS, evictions=3, n_gpus=2)
    args.update(kw)
    return summarize("p", ["a", "b", "c"], ARRIVAL, FIRST, FINISH, MODEL, OUTPUT, SLO, **args)


def test_summary_figures_match_hand_computed_values():
    """TTFTs are [0.5, 2.0, 10.0 (end 12 - arrival 2), 0.2]: the mean, the linear-interpolated percentiles, TPOT
    of the finished multi-token requests, SLO attainment, completions and throughput over the trace's span."""
    s = _run().summary
    assert (s["requests"], s["completed"], s["dropped"], s["unanswered"]) == (4, 3, 1, 1)
    assert s["ttft_mean_s"] == pytest.approx(12.7 / 4)
    # sorted [0.2, 0.5, 2.0, 10.0]: the q-th percentile sits at 3q/100 between them
    assert s["ttft_p50_s"] == pytest.approx(1.25)
    assert s["ttft_p90_s"] == pytest.approx(2.0 + 0.7 * 8.0)
    assert s["ttft_p95_s"] == pytest.approx(2.0 + 0.85 * 8.0)
    assert s["ttft_p99_s"] == pytest.approx(2.0 + 0.97 * 8.0)
    # requests 0 and 3 finished with more than one token: (2.5 - 0.5) / (5 - 1) and (5.2 - 3.2) / (3 - 1)
    assert s["tpot_mean_s"] == s["tpot_p50_s"] == pytest.approx(0.75)
    assert s["tpot_p99_s"] == pytest.approx(0.5 + 0.99 * 0.5)
    assert s["slo_attainment"] == 0.5  # requests 0 and 3
    assert s["throughput_rps"] == pytest.approx(3 / 10.0)
    assert s["duration_s"] == 10.0 and s["end_s"] == 12.0 and s["drain_s"] == pytest.approx(2.0)


def test_summary_counters_gpu_time_and_defaults():
    """Start counters come from ``starts``; utilisation is GPU-seconds over n_gpus x max(end, duration); without
    them, migrated and refused count 0 and the holding figure is the GPU-seconds."""
    s = _run().summary
    assert s["prewarm_hit_rate"] == 0.25
    assert (s["instance_starts"], s["starts_from_prewarm"], s["starts_from_loading_prewarm"], s["starts_cold"],
            s["evictions"]) == (4, 1, 1, 2, 3)
    assert s["requests_migrated"] == 0 and s["refused"] == 0
    assert s["gpu_seconds"] == s["gpu_seconds_holding"] == 6.0
    assert s["gpu_utilization"] == pytest.approx(6.0 / (2 * 12.0))
    given = _run(migrated=7, refused=2, gpu_seconds_holding=9.0).summary
    assert (given["requests_migrated"], given["refused"], given["gpu_seconds_holding"]) == (7, 2, 9.0)


def test_a_run_ending_before_the_trace_span_counts_over_the_span():
    """``end_s`` before ``duration_s``: no drain, and utilisation over the trace's span."""
    s = _run(end_s=8.0).summary
    assert s["drain_s"] == 0.0
    assert s["gpu_utilization"] == pytest.approx(6.0 / (2 * 10.0))
    # the unanswered request now waited 8 - 2 s
    assert s["ttft_mean_s"] == pytest.approx((0.5 + 2.0 + 6.0 + 0.2) / 4)


def test_per_model_figures_and_the_ttft_array():
    """Per model: the same figures over its own requests; a model with no request has no entry; ``ttft_s`` is
    every request's TTFT, unanswered ones at their wait to the end of the run."""
    r = _run()
    assert set(r.per_model) == {"a", "b"}
    a, b = r.per_model["a"], r.per_model["b"]
    assert (a["requests"], a["completed"], a["dropped"]) == (2, 2, 0)
    assert a["ttft_mean_s"] == pytest.approx(1.25) and a["tpot_mean_s"] == pytest.approx(0.5)
    assert a["slo_attainment"] == 0.5 and a["throughput_rps"] == pytest.approx(0.2)
    assert (b["requests"], b["completed"], b["dropped"]) == (2, 1, 1)
    assert b["ttft_mean_s"] == pytest.approx(5.1) and b["tpot_mean_s"] == b["tpot_p99_s"] == pytest.approx(1.0)
    assert b["slo_attainment"] == 0.5 and b["throughput_rps"] == pytest.approx(0.1)
    np.testing.assert_allclose(r.ttft_s, [0.5, 2.0, 10.0, 0.2])
    assert r.policy == "p"


def test_no_requests_and_no_starts():
    """An empty run: NaN statistics, a hit rate of 0 without starts, nothing per model."""
    e = np.zeros(0)
    r = summarize("p", ["a"], e, e, e, np.zeros(0, np.int32), np.zeros(0, np.int64), e, duration_s=10.0, end_s=10.0,
                  gpu_seconds=0.0, starts=dict.fromkeys(STARTS, 0), evictions=0, n_gpus=1)
    s = r.summary
    assert s["requests"] == 0 and s["completed"] == 0 and s["prewarm_hit_rate"] == 0.0
    assert math.isnan(s["ttft_mean_s"]) and math.isnan(s["slo_attainment"]) and math.isnan(s["ttft_p99_s"])
    assert r.per_model == {}
    assert math.isnan(pct(e, 99)) and pct(np.array([1.0, 3.0]), 50) == 2.0


def test_a_zero_span_and_a_bare_result():
    """A zero-length trace span is guarded (completions over 1e-9 s, not a division by zero or a negative
    rate); a ``RunResult`` built without TTFTs holds an empty array."""
    s = _run(duration_s=0.0).summary
    assert s["throughput_rps"] == pytest.approx(3 / 1e-9)
    assert RunResult("p", {}).ttft_s.shape == (0,) and RunResult("p", {}).per_model == {}
