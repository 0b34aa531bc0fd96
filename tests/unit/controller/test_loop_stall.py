"""The controller's event loop held up is said in its log: at once the first time, then summed once a minute.
Found in review: a /stats that held the loop 4-7 s on a server of 64 models pushed TTFT to 29 s, and no line said
why. A real controller's loop is held by a blocking call; the rate limit is checked on given times."""

import asyncio
import logging
import re
import time

from warmserve.controller.loop_stall import STALL_WARN_S, LoopStalls

from controller_harness import make_controller, run

log = logging.getLogger("test.loop_stall")


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event loop" in r.getMessage()]


def test_a_controller_whose_loop_is_held_says_so_with_how_long(model, caplog):
    async def main():
        c = make_controller(model)  # heartbeats every 0.05 s
        await c.start()
        try:
            await asyncio.sleep(0.3)
            time.sleep(1.6)  # a slow call on the loop
            await asyncio.sleep(0.3)
        finally:
            await c.close(drain=False)

    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        run(main())
    said = _said(caplog)
    assert len(said) == 1 and "py-spy dump --pid" in said[0], said
    held_s = float(re.search(r"held up for (\d+\.\d) s", said[0]).group(1))
    assert 1.5 <= held_s < 10, said
    assert [r.levelno for r in caplog.records if "event loop" in r.getMessage()] == [logging.WARNING]


def test_stalls_are_said_at_once_then_summed_once_a_minute(caplog):
    s = LoopStalls(log, interval_s=0.5, every_s=60.0)
    with caplog.at_level(logging.WARNING, logger="test.loop_stall"):
        assert s.round(100.0) == 0.0
        assert s.round(100.5) == 0.0  # on time
        assert s.round(100.9) == 0.0  # early rounds are not negative
        assert s.round(103.4) == 2.0  # 2 s late: said at once
        assert len(_said(caplog)) == 1 and "held up for 2.0 s" in _said(caplog)[0]
        t = 103.4
        for late in (1.5, STALL_WARN_S - 0.01, 3.0):  # two stalls and one too short to count, within the minute
            t += 0.5 + late
            s.round(t)
        assert len(_said(caplog)) == 1
        while t < 103.4 + 60:
            t += 0.5
            s.round(t)
        said = _said(caplog)
        assert len(said) == 2 and "held up 2 times in the last 60 s, 4.5 s in all, the longest 3.0 s" in said[1], said
        for _ in range(200):  # nothing more to say: no line however long it runs on time
            t += 0.5
            s.round(t)
        assert len(_said(caplog)) == 2
