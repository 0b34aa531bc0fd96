"""time_scale compresses every segment around its own day (found in review): the recipes took a part's day from its
first arrival, so a pre-replay stretch starting more than half a day before t = 0 was given the day before and moved
a day early (servegen, pre_s 46000, time_scale 0.5: the history at [-66195, -43200] instead of [-23000, 0), so a
warm-up would be empty), and a history day k's stretch was given day k + 1 the same way."""

import numpy as np
import pytest

from warmserve.workload.recipes import DAY_S, paper_workload, servegen_workload


def _in(t, lo, hi):
    return int(np.count_nonzero((t >= lo) & (t < hi)))


@pytest.mark.parametrize("pre_s", [40000.0, 46000.0, 60000.0])
def test_servegen_pre_replay_stretch_is_compressed_towards_t0(pre_s):
    kw = dict(start_s=12 * DAY_S + 23 * 3600, duration_s=600, pre_s=pre_s, history_days=0, total_rate_rps=0.5, seed=0)
    plain, half = servegen_workload(2, **kw), servegen_workload(2, time_scale=0.5, **kw)
    h = half.history.arrival_s
    assert len(h) == len(plain.history) > 0
    assert _in(h, -pre_s * 0.5, 0.0) == len(h), (h.min(), h.max())
    assert np.allclose(np.sort(h), np.sort(plain.history.arrival_s) * 0.5)
    assert half.warmup_s == pre_s * 0.5 and half.history_spans == [(-pre_s * 0.5, 0.0)]


def test_servegen_history_day_keeps_its_own_day():
    # pre_s 46000 > half a day: history day 1's stretch starts at -1.53 days, which rounds to day -2
    kw = dict(start_s=12 * DAY_S + 23 * 3600, duration_s=600, pre_s=46000.0, history_days=1, total_rate_rps=0.5,
              seed=0)
    plain, half = servegen_workload(2, **kw), servegen_workload(2, time_scale=0.5, **kw)
    h, p = half.history.arrival_s, plain.history.arrival_s
    day1 = (-DAY_S - 23000.0, -DAY_S + 300.0)
    assert _in(h, *day1) == _in(p, -DAY_S - 46000.0, -DAY_S + 600.0) > 0
    assert _in(h, -23000.0, 0.0) == _in(p, -46000.0, 0.0) > 0
    assert _in(h, *day1) + _in(h, -23000.0, 0.0) == len(h)
    assert half.history_spans == sorted([day1, (-23000.0, 0.0)])


def test_paper_warm_up_and_history_days_keep_their_days_with_a_short_day():
    # day_s 3000 and pre_s 1600 (> day_s / 2): the warm-up is day 0's, history day k's stretch day -k's
    day, pre, dur = 3000.0, 1600.0, 300.0
    kw = dict(total_rate_rps=2.0, duration_s=dur, pre_s=pre, history_days=2, seed=0, day_s=day)
    plain, half = paper_workload("conv", 2, **kw), paper_workload("conv", 2, time_scale=0.5, **kw)
    h, p = half.history.arrival_s, plain.history.arrival_s
    assert _in(h, -pre * 0.5, 0.0) == _in(p, -pre, 0.0) > 0
    for k in (1, 2):
        assert _in(h, -k * day - pre * 0.5, -k * day + dur * 0.5) == _in(p, -k * day - pre, -k * day + dur) > 0
    assert len(half.trace) == len(plain.trace) and half.trace.arrival_s.max() < dur * 0.5
    assert half.history_spans == sorted([(-pre * 0.5, 0.0)] + [(-k * day - pre * 0.5, -k * day + dur * 0.5)
                                                               for k in (1, 2)])
