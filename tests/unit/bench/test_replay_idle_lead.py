"""`bench replay`'s idle lead: a live cluster starts before the trace's t = 0 and its policy books every window
it waits through with no load. The history handed to it and the simulated twin must agree with that, whatever
the instant of the launch: the forecast of the first replayed window is the same with and without the lead's
idle ticks, and the same as the twin's. Mirrors run_live + Controller.__init__ + Policy.tick without processes."""

import math

import numpy as np
import pytest

from replay_harness import LAUNCH_UNIX, PROFILE, replay_args, replay_setup
from warmserve.bench import replay as R



@pytest.fixture(scope="module")
def setup():
    return replay_setup("--time-scale", "0.15", "--rate", "0.8", "--duration-s", "1200", "--start-lead-s", "40")


def _live_policy(a, w, served_sim, cost, t_launch, startup_s):
    """The controller's policy as `serve --history` builds it, started startup_s after the launch."""
    from warmserve.controller.controller import history_on_clock, policy_clock_origin
    from warmserve.policy import make_policy
    from warmserve.policy.config import PolicyConfig
    from warmserve.sim.inputs import model_infos

    window_s = a.window_s * a.time_scale
    t0_unix, rows = R.plan_live_history(w, served_sim, cost, a, t_launch)
    hist = {}
    for m, s, av, pk in rows:
        hist.setdefault(m, []).append((s, av, pk))
    hist = {m: tuple(np.array(c) for c in zip(*sorted(v))) for m, v in hist.items()}
    origin = policy_clock_origin(t_launch + startup_s, hist, "UTC")  # the controller reads it once it runs
    pol = make_policy("warmserve", models=model_infos(served_sim, cost), config=PolicyConfig(window_s=window_s),
                      history=history_on_clock(hist, origin, {s.name for s in served_sim}))
    return pol, t0_unix, origin


def _idle_ticks(pol, a, served_sim, cost, t_from, t_to, origin):
    from warmserve.policy.state import ClusterState
    from warmserve.sim.inputs import model_infos

    state = ClusterState.uniform(1, model_infos(served_sim, cost), gpus_per_server=a.cpu_workers,
                                 gpu_bytes=cost.gpu.pool_bytes)
    t = t_from
    while t < t_to:  # the controller's 0.5 s ticks while the replay waits for t = 0
        pol.tick(state, t - origin)
        t += 0.5


@pytest.mark.parametrize("phase_s,startup_s", [(13.0, 5.0), (0.0, 20.0), (30.0, 5.0), (44.0, 40.0), (22.5, 0.5)])
def test_first_window_forecast_is_the_same_with_and_without_the_idle_lead(setup, phase_s, startup_s):
    a, w, served_sim, cost = setup
    window_s = a.window_s * a.time_scale
    t_launch = LAUNCH_UNIX + phase_s
    pol, t0_unix, origin = _live_policy(a, w, served_sim, cost, t_launch, startup_s)
    # t = 0 on the policy's grid (ServeGen's t = 0 starts a window), at least the lead after the launch, and
    # idle_windows windows after the launch's window whatever the launch's phase
    j = (t0_unix - origin) / window_s
    assert j == pytest.approx(round(j), abs=1e-6)
    j = round(j)
    assert t0_unix - t_launch >= a.start_lead_s
    assert j - math.floor((t_launch - origin) / window_s) == R.idle_windows(a)
    h = pol._hist
    before_avg, before_peak = (x.copy() for x in pol.forecast_all(j))
    hist_before = h.avg[:, :j].copy()
    _idle_ticks(pol, a, served_sim, cost, t_launch + startup_s, t0_unix, origin)
    after_avg, after_peak = pol.forecast_all(j)
    np.testing.assert_array_equal(before_avg, after_avg)
    np.testing.assert_array_equal(before_peak, after_peak)
    np.testing.assert_array_equal(hist_before, h.avg[:, :j])
    # the idle windows are booked as idle, for every model; the loaded history ends before them
    n_idle = R.idle_windows(a)
    assert (h.avg[:, j - n_idle:j] == 0).all() and (h.peak[:, j - n_idle:j] == 0).all()
    assert np.nansum(h.avg[:, :j - n_idle]) > 0


def test_twin_forecasts_the_first_window_from_the_live_history(setup):
    """The twin (run_sim's workload and warm-up) ends up with the same history before t = 0 as the live policy
    after its idle lead, window for window, so both forecast the first replayed window alike."""
    from warmserve.sim.simulator import Simulator

    a, w, served_sim, cost = setup
    window_s = a.window_s * a.time_scale
    t_launch = LAUNCH_UNIX + 7.0
    pol, t0_unix, origin = _live_policy(a, w, served_sim, cost, t_launch, 3.0)
    _idle_ticks(pol, a, served_sim, cost, t_launch + 3.0, t0_unix, origin)
    j = round((t0_unix - origin) / window_s)

    wl, warmup_s = R.with_idle_lead(w, window_s, R.idle_windows(a))
    sim = Simulator(wl, served_sim, "warmserve", cost=cost,
                    config=R.twin_config(a.cpu_workers, window_s, a.drain_s, warmup_s=warmup_s))
    result = sim.run()
    js = math.floor(w.clock0_s / window_s + 1e-9)
    n = min(j, js)
    sh, lh = sim.policy._hist, pol._hist
    assert sorted(sh.index) == sorted(lh.index)
    rows_s = [sh.index[m] for m in sorted(sh.index)]
    rows_l = [lh.index[m] for m in sorted(lh.index)]
    np.testing.assert_allclose(sh.avg[rows_s, js - n:js], lh.avg[rows_l, j - n:j], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sh.peak[rows_s, js - n:js], lh.peak[rows_l, j - n:j], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sim.policy.forecast_all(js)[0], pol.forecast_all(j)[0], rtol=1e-9, atol=1e-12)
    # the twin replays nothing before t = 0 (the lead is idle) and measures only the trace
    assert sim.n_warm == 0 and result.summary["requests"] == len(w.trace)


def test_history_starts_sit_inside_their_windows():
    """Unix-time starts are nudged into their window, so the controller's floor(start / window) cannot fall one
    window short for a start that rounding put a hair below the window's edge."""
    from warmserve.sim.config import ServedModel
    from warmserve.sim.costmodel import CostModel

    a = replay_args("--time-scale", "0.15", "--rate", "0.8", "--duration-s", "300", "--start-lead-s", "0")
    w, served = R.build_workload(a)
    ss = [ServedModel(n, c) for n, c in served]
    t0, rows = R.plan_live_history(w, ss, CostModel.from_profile(PROFILE), a, LAUNCH_UNIX + 0.3)
    window_s = a.window_s * a.time_scale
    frac = np.array([((s - t0) / window_s) % 1.0 for _, s, _, _ in rows])
    assert rows and (frac > 0).all() and (frac < 1e-3).all()
