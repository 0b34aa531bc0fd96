"""The live policy's clock when the wall clock is set while serving (an NTP step, a VM's clock set at its resume from
a host's pause, an operator). Found in the clock review, on a live `serve --record-history` whose wall clock a
preloaded shim moved 3 h forward: the policy stayed on the start's clock, so every window recorded after the step
was stamped 3 h before the time it was measured. A test cannot set its machine's clock: the wall clock is read
through a shifted reader, the base clock (CLOCK_BOOTTIME) is the real one."""

import logging
import time

from warmserve.controller import clock
from warmserve.controller.history_record import starting_history
from warmserve.config import ControllerConfig

from controller_harness import make_controller


class SteppedWall:
    """This machine's wall clock, moved by ``step_s``."""

    def __init__(self):
        self.step_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.step_s


def test_a_controller_follows_a_wall_clock_set_forward(model, monkeypatch):
    wall = SteppedWall()
    monkeypatch.setattr(clock, "_policy_clock", clock.PolicyClock(wall=wall), raising=False)
    c = make_controller(model)
    assert abs(c.clock_origin_s + c.now_s() - wall()) < 1.0
    wall.step_s = 3 * 3600.0
    # the Unix time the controller's windows are stamped with (controller/history_record.py: origin + driver time)
    assert abs(c.clock_origin_s + c.now_s() - wall()) < 1.0


def test_a_step_back_keeps_the_clock_going_and_is_said_with_the_lead_it_leaves(caplog):
    wall = SteppedWall()
    pc = clock.PolicyClock(wall=wall)
    seen = [pc()]
    with caplog.at_level(logging.WARNING, "warmserve.controller"):
        wall.step_s = -2 * 3600.0
        seen += [pc() for _ in range(100)]
        back = [r.getMessage() for r in caplog.records]
        caplog.clear()
        wall.step_s = 0.0  # set right again: in step, with no jump
        seen += [pc() for _ in range(100)]
        again = [r.getMessage() for r in caplog.records]
    assert seen == sorted(seen) and seen[-1] - seen[0] < 60.0
    assert len(back) == 1 and "stepped 7200 s back" in back[0] and "7200 s ahead" in back[0]
    assert len(again) == 1 and "back in step" in again[0]


def test_a_step_forward_is_said_once_and_jumps_by_the_step(caplog):
    wall = SteppedWall()
    pc = clock.PolicyClock(wall=wall)
    before_s = pc()
    wall.step_s = 600.0
    with caplog.at_level(logging.WARNING, "warmserve.controller"):
        after = [pc() for _ in range(100)]
    assert 600.0 <= after[0] - before_s < 660.0 and after == sorted(after)
    assert [r.getMessage()[:40] for r in caplog.records] == ["the wall clock stepped 600 s forward (an"]


def test_a_history_written_before_the_clock_was_set_back_is_said_to_be_ahead(tmp_path, caplog):
    f = tmp_path / "h.csv"
    f.write_text(f"model,window_start_s,avg,peak\nm,{time.time() + 3 * 3600:.0f},1,2\n")
    with caplog.at_level(logging.INFO, "warmserve.controller"):
        starting_history(ControllerConfig(history_path=str(f)))
    read = [r.getMessage() for r in caplog.records if "rows of" in r.getMessage()]
    assert len(read) == 1 and "3.0 h ahead of this machine's clock" in read[0] and "-3.0 h" not in read[0]
