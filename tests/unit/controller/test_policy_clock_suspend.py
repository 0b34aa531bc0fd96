"""The live policy's clock counts the time a machine was suspended (Linux CLOCK_BOOTTIME), as the wall clock the
load's days follow does. Found in review: it followed time.monotonic, which stops while a VM is paused, so after a
pause of hours the daily windows the forecasts are keyed on lagged the load's by the pause. A test cannot suspend its
machine: the clock is moved as a resume moves CLOCK_BOOTTIME."""

import time

from warmserve.controller import clock

from controller_harness import make_controller


def test_a_suspend_moves_the_policy_clock_as_it_moves_the_wall_clock(model, monkeypatch):
    c = make_controller(model)
    before_s = c.now_s()
    resumed = clock.policy_clock_s
    monkeypatch.setattr(clock, "policy_clock_s", lambda: resumed() + 3600.0)  # an hour asleep, then resumed
    assert 3600.0 <= c.now_s() - before_s < 3660.0


def test_the_policy_clock_never_goes_back():
    seen = [clock.policy_clock_s() for _ in range(1000)]
    assert seen == sorted(seen) and time.monotonic() <= clock.policy_clock_s() + 1e-3
