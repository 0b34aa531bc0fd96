"""Restarts of local workers (controller/restarts.py), found by mutation testing: a planned replacement whose
fresh process dies before its Hello (``_replace_failed``) takes the old record out of the controller's tables of
GPU workers, counts the GPU lost once and restarts the worker; a worker that drained and left is restarting by
plan, not lost, through its first restart's wait; each failed try of a restart is logged with its number in a
row. Real child processes stand for the workers' processes, scripted
peers speak for them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import subprocess
import sys

import pytest

from warmserve import protocol as P
from warmserve.controller import views
from warmserve.controller.restarts import reap
from warmserve.errors import WorkerLostError

from controller_harness import MODEL, WorkerProc, make_controller, run, scripted_local_worker, sleeper, stop, until

WID = "host-1-cpu0"


def test_a_replacement_whose_process_exits_unadmitted_takes_the_old_record_out(model):
    """The fresh process exits at once (status 3) without a Hello: replace_worker raises WorkerLostError, and the
    retired record is in neither gpu_workers nor by_gpu (it was left in both before its successor's admission),
    workers_lost counts the GPU once, and a restart of the worker is under way."""
    async def main():
        # A long back-off: the restart waits through the test, and the close ends it.
        c = make_controller(model, restart_backoff_s=30.0, restart_backoff_cap_s=30.0)
        ep = await c.start()

        def instead(n):  # the fresh one exits before it says anything
            if n > 1:
                return WorkerProc([sys.executable, "-c", "raise SystemExit(3)"], stdin=subprocess.DEVNULL)

        procs = scripted_local_worker(c, ep, WID, instead=instead)
        try:
            await c.wait_for_workers(1, 5)
            c.policy_running = False  # nothing but this test's replacement touches the worker
            old = c.by_gpu[0]
            with pytest.raises(WorkerLostError, match="exited with status 3 before it was admitted"):
                await asyncio.wait_for(c.replace_worker(old, MODEL), 5)
            assert old not in c.gpu_workers and c.gpu_workers == []
            assert 0 not in c.by_gpu
            assert c.metrics.workers_lost.get() == 1
            assert old.ident in c.restarting and old.proc is procs[1]
            assert not c.replacing
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())


def test_a_worker_that_drained_and_left_reads_as_restarting_while_its_restart_waits(model):
    """A local worker that drains (Stats.draining) and leaves with nothing in flight left by plan: its restart is
    under way and the workers gauge says state="restarting" (not "lost") while the restart waits for its old
    process to exit (DRAINED_EXIT_WAIT_S) and then through its back-off."""
    async def main():
        c = make_controller(model, restart_backoff_s=30.0, restart_backoff_cap_s=30.0)
        ep = await c.start()
        procs = scripted_local_worker(c, ep, WID)
        try:
            await c.wait_for_workers(1, 5)
            w = c.by_gpu[0]
            peer = procs[0].peer
            await peer.send(P.Stats(id=0, worker_id=WID, device="cpu", pid=peer.pid, uptime_s=1.0,
                                    pool=P.PoolStats(page_bytes=2 << 20, total_bytes=1 << 30, free_bytes=1 << 30),
                                    models=[], instances=[], in_flight=0, draining=True))
            assert await until(lambda: w.draining, 4)
            c.hub.lose(w, "test: it left after its drain")
            assert w.left_by_plan and w.ident in c.restarting
            await asyncio.sleep(0.3)  # the restart runs: its old process has DRAINED_EXIT_WAIT_S to exit
            assert w.ident in c.restarting_by_plan
            views.collect(c)
            assert c.metrics.workers.get(state="restarting") == 1
            assert c.metrics.workers.get(state="lost") == 0
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())


def test_each_failed_restart_try_is_logged_with_its_number_in_a_row(model, caplog):
    """A restart whose starter fails twice (a typed error, then any other) says "restart 1 in a row" and "restart 2
    in a row" for those tries, "restart 3 in a row" for the one that comes back: the count an operator reads for
    a crash loop."""
    async def main():
        c = make_controller(model, restart_backoff_s=0.02)
        ep = await c.start()

        def instead(n):
            if n == 2:
                raise WorkerLostError("test: no room for it yet")
            if n == 3:
                raise RuntimeError("test: the launcher broke")

        procs = scripted_local_worker(c, ep, WID, instead=instead)
        ident = WID.encode()
        try:
            await c.wait_for_workers(1, 5)
            first = c.hub.workers[ident]
            procs[0].kill()
            assert await until(lambda: (w := c.hub.workers.get(ident)) is not None and w is not first and w.ready, 8)
            assert len(procs) == 2  # four starts: the first, two that raised, the one that came back
        finally:
            stop(procs)
            await c.close(drain=False)

    with caplog.at_level(logging.INFO, logger="warmserve.controller"):
        run(main())
    said = [r.getMessage() for r in caplog.records if r.name == "warmserve.controller"]
    failed = [m for m in said if m.startswith("could not restart")]
    assert len(failed) == 2, said
    assert "(restart 1 in a row): test: no room for it yet" in failed[0], failed
    assert "(restart 2 in a row); trying again" in failed[1], failed
    tries = [m for m in said if m.startswith("restarting ")]
    assert len(tries) == 3, said
    for n, line in enumerate(tries, 1):
        assert f"(restart {n} in a row; its process ended: " in line, tries


def test_a_replacement_whose_starter_raises_fails_with_that_error_and_restarts_the_worker(model):
    """The starter of the fresh process raises (no process at all): replace_worker raises that error, and the GPU
    is lost and the worker restarted as when a fresh process dies (nothing of a process that never was is
    stopped)."""
    async def main():
        c = make_controller(model, restart_backoff_s=30.0, restart_backoff_cap_s=30.0)
        ep = await c.start()

        def instead(n):
            if n == 2:
                raise RuntimeError("test: the launcher broke")

        procs = scripted_local_worker(c, ep, WID, instead=instead)
        try:
            await c.wait_for_workers(1, 5)
            c.policy_running = False
            old = c.by_gpu[0]
            with pytest.raises(RuntimeError, match="test: the launcher broke"):
                await asyncio.wait_for(c.replace_worker(old, MODEL), 5)
            assert c.gpu_workers == [] and 0 not in c.by_gpu
            assert c.metrics.workers_lost.get() == 1 and old.ident in c.restarting
            assert old.proc is procs[0]  # what the restart stops first: the old process, killed already
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())


def test_reap_without_a_graceful_wait_stops_a_running_process_and_leaves_an_ended_one():
    """reap(proc, graceful=False) of a process still running sends it SIGTERM (it exits by it); of one that has
    exited already it does nothing (its status stays its own)."""
    running = sleeper()
    try:
        reap(running, graceful=False)
        assert running.poll() == -signal.SIGTERM
    finally:
        if running.poll() is None:
            running.kill()
        running.wait()
    ended = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"], stdin=subprocess.DEVNULL)
    ended.wait()
    reap(ended, graceful=False)
    assert ended.returncode == 4


def test_a_fresh_process_not_admitted_in_time_is_killed_by_the_failed_replacement(model):
    """A fresh process that never says Hello within worker_start_timeout_s: replace_worker raises, and by then it
    has been sent SIGKILL, marked as the controller's own kill, before the restart it starts has run (not left
    running for that restart to find)."""
    async def main():
        c = make_controller(model, restart_backoff_s=30.0, restart_backoff_cap_s=30.0)
        c.config = dataclasses.replace(c.config, worker_start_timeout_s=0.5)
        ep = await c.start()
        # the fresh one (and any later) never speaks
        procs = scripted_local_worker(c, ep, WID, instead=lambda n: sleeper() if n > 1 else None)
        try:
            await c.wait_for_workers(1, 5)
            c.policy_running = False
            with pytest.raises(WorkerLostError, match="was not admitted within 0.5 s"):
                await c.replace_worker(c.by_gpu[0], MODEL)  # no wait_for: nothing else runs before the check
            fresh = procs[1]
            assert getattr(fresh, "killed_by_controller", False)
            assert fresh.wait(timeout=5) == -signal.SIGKILL
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())
