"""State a long-running controller's policy keeps stays the size of what is live (found in a review of months of
uptime): a score per prewarm that failed, and ``auto``'s pick per day, were kept forever."""

import numpy as np

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.forecast import ModelForecaster
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def test_scores_of_failed_prewarms_are_dropped_at_the_next_plan():
    models = [ModelInfo(f"m{k}", 10 * GiB, 1, 1 << 19) for k in range(4)]
    t = np.arange(288)
    hist = {m.name: (t * 300.0, np.full(288, 60.0), np.full(288, 90.0)) for m in models}
    pol = make_policy("warmserve", models=models, config=PolicyConfig(window_s=300.0), history=hist)
    state = ClusterState.uniform(2, models, gpu_bytes=80 * GiB)
    drv = instant_driver(pol, state)
    now, failed = 86400.0, 0
    for _ in range(4):  # within the day's second window (the live meter books the next one idle)
        now += 61.0  # past replan_s: each tick plans
        drv.tick(now)
        assert state.prewarms, "the plan placed no prewarm to fail"
        assert set(pol._scores) <= set(state.prewarms) | set(state.instances)
        for pid in list(state.prewarms):
            drv.prewarm_failed(pid)
            failed += 1
    assert failed >= 4 * 4 and len(pol._scores) <= failed / 4  # the last round's, until the next plan


def test_autos_pick_is_kept_for_the_days_a_backtest_asks_for_only():
    period = 8
    rng = np.random.default_rng(0)
    y = 10 + 5 * np.sin(2 * np.pi * np.arange(period * 9) / period) + rng.random(period * 9)
    fc = ModelForecaster("auto", period)
    for day in range(3, 8):
        fc.predict(y[: day * period + 1])
    assert len(fc._chosen) <= 3 and len(fc._fits) <= 6
