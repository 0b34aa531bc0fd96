"""The restart back-off of a local worker that crash-looped, then stayed up past ``restart_reset_s``: its count of
restarts in a row starts over ("A restarted worker up this long counts as healthy again: its next restart waits
restart_backoff_s"), even when a new record took its routing id meanwhile without a restart: a rejoin (a Hello
again from the same process, ``WorkerHub.rejoin``) or a planned replacement (a cold start's fresh engine). Found
in review: the time up was judged on the last record's admission only, so a crash 0.2 s after a rejoin counted on
from the old crash loop (restart 4 in a row, a back-off up to restart_backoff_cap_s)."""

import asyncio
import logging

import pytest

from warmserve import protocol as P

from controller_harness import MODEL, make_controller, run, scripted_local_worker, stop, until

WID = "host-1-cpu0"
RESET_S = 0.5


async def crash_loop(c, procs, times: int = 3) -> None:
    """Kill the worker's process ``times`` times, each as soon as its successor is admitted: restarts in a row."""
    for i in range(times):
        c.local_procs[WID.encode()].kill()
        assert await until(lambda: len(procs) == i + 2 and any(w.ready for w in c.gpu_workers), 10)


async def restart_line(c, caplog) -> str:
    """Kill the worker's process and return the log line of the restart that follows."""
    caplog.clear()
    c.local_procs[WID.encode()].kill()
    assert await until(lambda: "restarting" in caplog.text, 5)
    return next(r.getMessage() for r in caplog.records if r.getMessage().startswith("restarting"))


@pytest.mark.parametrize("up_s, expected", [(2 * RESET_S, 1), (0.0, 4)], ids=["healthy-run", "still-looping"])
def test_restart_count_resets_after_a_long_healthy_run_across_a_rejoin(model, caplog, up_s, expected):
    """Up ``up_s`` after 3 restarts in a row, a Hello again (rejoin: a new record, no restart), a crash 0.2 s later:
    restart 1 after a healthy run; with no healthy run the loop goes on (restart 4), as before the rejoin."""
    caplog.set_level(logging.INFO, logger="warmserve.controller")

    async def main():
        c = make_controller(model, restart_backoff_s=0.1, restart_backoff_cap_s=30.0, restart_reset_s=RESET_S)
        ep = await c.start()
        procs = scripted_local_worker(c, ep, WID)
        try:
            await c.wait_for_workers(1, 10)
            await crash_loop(c, procs)
            await asyncio.sleep(up_s)
            peer = procs[-1].peer
            old = c.hub.workers[WID.encode()]
            await peer.send(P.Hello(worker_id=peer.wid, device="cpu", pid=peer.pid, capacity_bytes=1 << 30,
                                    page_bytes=2 << 20, protocol_version=P.PROTOCOL_VERSION))  # connection re-made
            assert await until(lambda: any(w.ready and w is not old and w.pid == peer.pid for w in c.gpu_workers), 5)
            assert len(procs) == 4, "the rejoin started a process"
            await asyncio.sleep(0.2)
            line = await restart_line(c, caplog)
            # and why its process ended (found in review: workers killed for memory were restarted with no word why)
            assert f"(restart {expected} in a row; its process ended: killed by SIGKILL (the kernel's OOM killer " \
                   "sends it when host memory" in line, line
        finally:
            await c.close(drain=False)
            stop(procs)

    run(main())


def test_restart_count_resets_after_a_long_healthy_run_across_a_planned_replacement(model, caplog):
    """Up past restart_reset_s after 3 restarts in a row, its process replaced by a fresh engine (a cold start, no
    restart), the fresh one crashing 0.2 s after its admission: restart 1, not 4."""
    caplog.set_level(logging.INFO, logger="warmserve.controller")

    async def main():
        c = make_controller(model, restart_backoff_s=0.1, restart_backoff_cap_s=30.0, restart_reset_s=RESET_S)
        ep = await c.start()
        procs = scripted_local_worker(c, ep, WID)
        try:
            await c.wait_for_workers(1, 10)
            await crash_loop(c, procs)
            await asyncio.sleep(2 * RESET_S)
            old = c.hub.workers[WID.encode()]
            assert c.can_replace(old)
            new = await c.replace_worker(old, MODEL)
            assert new.proc is procs[-1] and len(procs) == 5
            await asyncio.sleep(0.2)
            line = await restart_line(c, caplog)
            assert "(restart 1 in a row; its process ended: killed by SIGKILL" in line, line
        finally:
            await c.close(drain=False)
            stop(procs)

    run(main())
