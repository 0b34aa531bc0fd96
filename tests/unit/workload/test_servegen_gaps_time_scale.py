"""meta["history_gaps_s"] is scaled by time_scale around its day as history_spans and the arrivals are (found in
review: it stayed in trace time, so at time_scale 0.5 the gap it named, [-346200, -345000), held 23,190 history
requests and the known span (-345300, -345000) lay inside it)."""

import numpy as np
import pytest

from warmserve.workload.recipes import DAY_S, SERVEGEN_LAST_DAY_S, servegen_workload

START = SERVEGEN_LAST_DAY_S + 22 * 3600 + 50 * 60  # history day 4: the end of m-mid's gap on day 9 and 10 known minutes


@pytest.mark.parametrize("time_scale", [0.5, 1.0, 2.0])
def test_history_gaps_are_scaled_like_the_spans(time_scale):
    w = servegen_workload(6, start_s=START, total_rate_rps=20.0, history_days=4, seed=0, time_scale=time_scale)
    day = -4 * DAY_S
    assert w.meta["history_gaps_s"] == [[day - 600.0 * time_scale, day + 600.0 * time_scale]]
    assert (day + 600.0 * time_scale, day + 1200.0 * time_scale) in w.history_spans
    h = w.history.arrival_s
    for lo, hi in w.meta["history_gaps_s"]:
        assert not np.any((h >= lo) & (h < hi))
        assert not any(a < hi and b > lo for a, b in w.history_spans)
