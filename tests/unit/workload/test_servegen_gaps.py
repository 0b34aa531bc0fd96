"""ServeGen's data gaps and coverage (found in review): windows where all of a model's clients are 0 (and the
partial ones at their edges) are missing data (SOURCES.md: m-mid runs at ~1900 requests/s and drops to 0 for up
to 3.8 hours), but a replay inside one replayed the model's series as silent and a history day inside one was
booked as a known zero; a replay outside a model's data (deepseek-r1 has day 0 only) returned an empty workload
without a word."""

import gzip

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload.recipes import DAY_S, SERVEGEN_LAST_DAY_S, servegen_workload


def test_a_replay_touching_a_data_gap_is_refused_with_a_start_that_works():
    # m-mid's clients are all 0 on day 13 from 08:00 to 09:50, and at 1% of m-mid's usual rate until 10:00
    with pytest.raises(InvalidArgumentError, match="m-mid.*data gap from day 13 08:00 to day 13 10:00") as e:
        servegen_workload(6, start_s=SERVEGEN_LAST_DAY_S + 9.5 * 3600, history_days=1, seed=0)
    fix = e.value.suggested_start_s
    assert f"start_s={fix:.0f}" in str(e.value) and e.value.model == "m-mid"
    w = servegen_workload(6, start_s=fix, history_days=1, seed=0)
    assert all(np.any(w.trace.model == i) for i in range(6))
    # the warm-up is replayed too: a replay right after the gap, whose warm-up reaches into it, is refused
    with pytest.raises(InvalidArgumentError, match="m-mid") as e:
        servegen_workload(6, start_s=SERVEGEN_LAST_DAY_S + 10 * 3600 + 5 * 60, history_days=1, seed=0)
    # the start suggested is the nearest that fits, one window on (found by mutation testing: the search could skip
    # it without a test failing)
    assert e.value.suggested_start_s == SERVEGEN_LAST_DAY_S + 10 * 3600 + 15 * 60


def test_history_in_a_data_gap_is_unknown_not_zero():
    # the default replay, day 13 20:00: history day 4 (day 9, 19:50-20:20) lies in m-mid's gap of 19:00-23:00
    w = servegen_workload(6, total_rate_rps=20.0, seed=0)
    day4 = (-4 * DAY_S - 600.0, -4 * DAY_S + 1200.0)
    assert not any(a < day4[1] and b > day4[0] for a, b in w.history_spans), w.history_spans
    h = w.history.arrival_s
    assert not np.any((h >= day4[0]) & (h < day4[1]))  # no model's load there: the spans are shared by all
    assert list(day4) in w.meta["history_gaps_s"]
    for k in (1, 2, 3, 5, 7):  # the other days stay known
        assert (-k * DAY_S - 600.0, -k * DAY_S + 1200.0) in w.history_spans
    # but for day 6's first 10 minutes (day 7, 19:50: m-mid at 1% of its usual rate, the end of a gap)
    assert (-6 * DAY_S, -6 * DAY_S + 1200.0) in w.history_spans


def test_a_history_day_partly_in_a_gap_keeps_its_known_part_and_time_scale_stretches_it():
    # replay from day 13 22:50: history day 4 is day 9 22:40-23:10, the gap's last 20 minutes and 10 known ones
    start = SERVEGEN_LAST_DAY_S + 22 * 3600 + 50 * 60
    w = servegen_workload(6, start_s=start, total_rate_rps=20.0, history_days=4, seed=0)
    gap_end = -4 * DAY_S + 600.0  # day 9 23:00
    assert (gap_end, -4 * DAY_S + 1200.0) in w.history_spans, w.history_spans
    assert w.meta["history_gaps_s"] == [[-4 * DAY_S - 600.0, gap_end]]
    mid = [i for i, n in enumerate(w.models) if n.startswith("m-mid")]
    h = w.history
    assert np.any(np.isin(h.model, mid) & (h.arrival_s >= gap_end) & (h.arrival_s < -4 * DAY_S + 1200.0))
    half = servegen_workload(6, start_s=start, total_rate_rps=20.0, history_days=4, seed=0, time_scale=0.5)
    assert (-4 * DAY_S + 300.0, -4 * DAY_S + 600.0) in half.history_spans


def test_a_replay_outside_a_models_data_is_refused_saying_what_it_covers():
    with pytest.raises(InvalidArgumentError, match="deepseek-r1 has data from day 0 00:00 to day 1 00:00"):
        servegen_workload(4, models=("deepseek-r1",), total_rate_rps=5.0, history_days=1, seed=0)
    w = servegen_workload(4, models=("deepseek-r1",), start_s=22 * 3600, total_rate_rps=5.0, history_days=0, seed=0)
    assert len(w.trace) / w.duration_s == pytest.approx(5.0, rel=0.2)


# traffic only before the replay, and only after it (found by mutation testing: with the first case alone the
# check's end bound was not pinned)
@pytest.mark.parametrize("day", [2, 6], ids=["before", "after"])
def test_series_without_traffic_in_the_replay_are_refused_not_an_empty_workload(tmp_path, day):
    path = tmp_path / "windows.csv.gz"
    rows = ["category,model,client_id,t_s,rate_rps,cv,pattern,param1,param2"]
    rows += [f"language,m-large,1,{day * DAY_S + k * 600:.0f},0.5,1.0,Gamma,1.0,2.0" for k in range(6)]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")
    with pytest.raises(InvalidArgumentError, match=f"no request .* traffic span day {day} 00:00 to day {day} 01:00"):
        servegen_workload(1, models=("m-large",), path=str(path), start_s=5 * DAY_S, total_rate_rps=2.0,
                          history_days=1)


def test_a_start_without_room_for_the_history_days_is_refused_with_a_start_that_works():
    """Found in review: this case had its own older check ahead of the one that suggests a start, so its error
    named the bound but no start_s to use (suggested_start_s missing)."""
    early = 5 * DAY_S + 20 * 3600  # day 5 20:00: 7 history days and the warm-up reach back before day 0
    with pytest.raises(InvalidArgumentError, match="no room for 7 history days") as e:
        servegen_workload(6, start_s=early, history_days=7, seed=0)
    fix = getattr(e.value, "suggested_start_s", None)
    assert fix is not None, f"no start suggested: {e.value}"
    need = 7 * DAY_S + 600.0
    assert e.value.needs_start_s == need and f"start_s >= {need:.0f}" in str(e.value)
    assert fix >= need and f"start_s={fix:.0f}" in str(e.value)
    w = servegen_workload(6, start_s=fix, history_days=7, total_rate_rps=20.0, seed=0)
    assert len(w.trace) > 0 and len(w.history_spans) > 0
