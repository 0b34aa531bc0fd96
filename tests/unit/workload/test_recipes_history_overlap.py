"""History days must not overlap the warm-up or the replay (found in review): history day k covers [-k day - pre_s,
-k day + duration_s), stretched by time_scale around its day, so once (pre_s + duration_s) x time_scale passed a
day it reached into the warm-up and the replay and was sampled on top of them (`warmserve simulate --workload
servegen --start-hour 11 --duration-s 36000 --time-scale 2.5`, 2 history days: replay 288,010 -> 305,275
requests, warm-up 4,766 -> 12,411). Both recipes now refuse it, naming the numbers and the fix; the ServeGen one
also where the segments overlap in trace time (a time_scale below 1), since history day 1 would then re-draw the
warm-up's and the replay's own ServeGen windows as history."""

import subprocess
import sys

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.presets import scale_preset
from warmserve.workload.recipes import DAY_S, paper_workload, servegen_workload

SG = dict(n_models=2, start_s=10 * DAY_S, pre_s=3600.0, seed=0, rate_scale=0.01)


@pytest.mark.parametrize("duration_s,time_scale", [(DAY_S, 1.0), (DAY_S + 3600.0, 1.0), (30000.0, 3.0),
                                                   (2 * DAY_S, 0.5)])
def test_servegen_refuses_history_days_that_overlap_the_warm_up_or_the_replay(duration_s, time_scale):
    with pytest.raises(InvalidArgumentError, match=r"history_days=1.*overlap.*history_days=0") as e:
        servegen_workload(duration_s=duration_s, history_days=1, time_scale=time_scale, **SG)
    assert e.value.history_days == 1 and e.value.span_s == pytest.approx((duration_s + 3600.0) * max(time_scale, 1))
    assert f"{duration_s + 3600.0:.0f}" in str(e.value)


def test_servegen_a_replay_with_warm_up_of_exactly_a_day_keeps_its_history_apart():
    dur = DAY_S - 3600.0
    w0 = servegen_workload(duration_s=dur, history_days=0, **SG)
    w1 = servegen_workload(duration_s=dur, history_days=1, **SG)
    # the draws differ (a series' history is drawn before the next series' replay), the load does not: before the
    # fix an overlapping history day doubled the warm-up
    assert len(w1.history.span(-3600.0, 0.0)) == pytest.approx(len(w0.history.span(-3600.0, 0.0)), rel=0.02)
    assert len(w1.trace) == pytest.approx(len(w0.trace), rel=0.02)
    day1 = [s for s in w1.history_spans if s != (-3600.0, 0.0)]
    assert day1 and min(a for a, _ in day1) >= -DAY_S - 3600.0 and max(b for _, b in day1) <= -3600.0


def test_paper_refuses_a_time_scale_that_stretches_history_onto_the_replay():
    kw = dict(duration_s=1200.0, pre_s=600.0, seed=0)
    with pytest.raises(InvalidArgumentError, match=r"time_scale 50.*1800 s.*90000 s.*86400 s") as e:
        paper_workload("conv", 2, history_days=1, time_scale=50.0, **kw)
    assert e.value.time_scale == 50.0 and e.value.max_time_scale == pytest.approx(48.0)
    w = paper_workload("conv", 2, history_days=0, time_scale=50.0, **kw)  # no history: nothing to overlap
    assert len(w.trace) > 0
    w = paper_workload("conv", 2, history_days=1, time_scale=48.0, **kw)  # exactly a day: apart
    w0 = paper_workload("conv", 2, history_days=0, time_scale=48.0, **kw)
    # the draws differ (a model's history days are drawn before the next model's replay), the load does not
    assert len(w.history.span(-w.warmup_s, 0.0)) == pytest.approx(len(w0.history), rel=0.05)
    assert w.history_spans == [(-DAY_S - w.warmup_s, -w.warmup_s), (-w.warmup_s, 0.0)]


def test_the_scale_preset_refuses_and_the_simulate_cli_exits_2():
    preset = scale_preset(8, 4, duration_s=36000.0, start_hour=11.0, history_days=2, time_scale=2.5)
    with pytest.raises(InvalidArgumentError, match="--time-scale"):
        preset.build()
    r = subprocess.run([sys.executable, "-m", "warmserve", "simulate", "--workload", "servegen",
                        "--gpus", "8", "--models", "4", "--start-hour", "11", "--duration-s", "36000",
                        "--time-scale", "2.5", "--history-days", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "overlap" in r.stderr and "--history-days 0" in r.stderr
