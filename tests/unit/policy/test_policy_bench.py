"""The two policy benchmarks' building blocks (their full runs are in bench/*/README.md)."""

import math

import numpy as np
import pytest

from warmserve.bench import forecast as F
from warmserve.bench import placement as PL


def test_concurrency_derivation_hand_computed():
    rate = np.array([10.0, np.nan])
    avg, peak = F.to_concurrency(rate, np.array([4.0, 1.0]), 50.0, (0.1, 0.02))
    s = 0.1 + 50 * 0.02  # 1.1 s in flight per request
    assert avg[0] == pytest.approx(11.0)
    assert peak[0] == pytest.approx(11.0 + math.sqrt(2 * math.log(600 / s)) * math.sqrt(11.0 * 4.0))
    assert np.isnan(avg[1]) and np.isnan(peak[1])
    # never more in flight than the window's requests
    _, p = F.to_concurrency(np.array([0.01]), np.array([1e4]), 50.0, (0.1, 0.02))
    assert p[0] == pytest.approx(6.0)


def test_servegen_series_load_with_gaps_marked():
    series, out = F.load_series(F.default_traces(), 2)
    assert set(series) >= {"m-large", "m-mid", "m-small"} and len(series) == 5
    assert np.isnan(series["m-mid"]["rate"]).sum() >= 84  # the exact-zero windows at least
    assert not np.isnan(series["m-large"]["rate"]).any()
    assert 100 < out["m-large"] < 200


def test_selector_is_out_of_sample():
    rng = np.random.default_rng(0)
    y = rng.random(F.PERIOD * 10) * 10 + 50
    start = len(y) - F.PERIOD * 2
    preds, _ = F.evaluate(y, start)
    assert len(preds["auto_chosen"]) == 2
    assert np.isnan(preds["auto"][:start]).all() and not np.isnan(preds["auto"][start:]).any()


def test_planning_round_smoke():
    r = PL.plan_time(16, 8, repeats=1)
    assert r["idle_prewarms_placed"] > 0 and r["plan_ms"] > 0
    s = PL.survival("laminar", 16, 8, rounds=2, seeds=(1,))
    assert s["server_rounds_not_laminar"] == 0 and 0 <= s["destroyed_share"] <= 1
