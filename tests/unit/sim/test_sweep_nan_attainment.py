"""A rate sweep's max swept rate under the SLO (found in review): a seed that replays no request has NaN SLO
attainment, so the point's mean is NaN; ``NaN < target`` is False, so highest_rate_meeting counted the point as
meeting the SLO, while max_rate_under_slo (``>= target``) counts it as failing."""

from __future__ import annotations

import math

from warmserve.sim.runner import highest_rate_meeting


def test_a_nan_attainment_fails_the_slo_like_the_max_rate_search():
    pts = [{"offered_rate_rps": 0.1, "slo_attainment": math.nan}]
    assert highest_rate_meeting(pts, 0.99) == 0.0
    # a NaN point stops the walk up the rates as any failing point does
    pts = [{"offered_rate_rps": 1.0, "slo_attainment": 1.0}, {"offered_rate_rps": 2.0, "slo_attainment": math.nan},
           {"offered_rate_rps": 4.0, "slo_attainment": 1.0}]
    assert highest_rate_meeting(pts, 0.99) == 1.0
    # the boundary is unchanged: reaching the target exactly meets it
    assert highest_rate_meeting([{"offered_rate_rps": 3.0, "slo_attainment": 0.99}], 0.99) == 3.0
