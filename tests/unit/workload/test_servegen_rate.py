"""servegen_workload's total_rate_rps over a span that does not start or end on ServeGen's 10-minute windows:
each window counts for the share of it the span covers (it counted whole), so the realised rate is the one
asked for. 08:00 of the last day: series whose rates change between windows and whose arrivals are regular
enough that 60 seeds pin the mean down to ~0.002 rps."""

import numpy as np
import pytest

from warmserve.workload.recipes import SERVEGEN_LAST_DAY_S, servegen_workload

BASE_S = SERVEGEN_LAST_DAY_S + 8 * 3600


@pytest.mark.parametrize("offset_s,duration_s", [(30, 1260), (570, 660), (30, 660), (0, 1200)])
def test_total_rate_holds_off_the_window_grid(offset_s, duration_s):
    # m-mid has a data gap at 08:00 on the last day (refused since it was found): the two other language models
    rates = [len(servegen_workload(6, start_s=BASE_S + offset_s, duration_s=duration_s, pre_s=0, history_days=0,
                                   total_rate_rps=0.5, seed=seed, repeat_days=6,
                                   models=("m-large", "m-small")).trace) / duration_s
             for seed in range(60)]
    assert np.mean(rates) == pytest.approx(0.5, abs=0.015)
