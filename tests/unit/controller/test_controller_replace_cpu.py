"""A CPU worker's planned replacement (a cold start's fresh engine) whose old process will not go: real child
processes stand for the worker processes, and a scripted peer per process speaks for it over ZeroMQ."""

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time

from warmserve import protocol as P

from controller_harness import MODEL, Peer, StuckProc, WorkerProc, add_local_worker, make_controller, run, stop, until

WID = "host-1-cpu0"


class ExitingPeer(Peer):
    """A worker whose process exits once it has answered Shutdown, as a real one does (close() waits for that)."""

    async def handle(self, msg):
        await super().handle(msg)
        if isinstance(msg, P.Shutdown):
            os.kill(self.pid, signal.SIGKILL)


def child(cls, life_s: float, code: str = ""):
    """A child process of class cls (a StuckProc exits by itself after ``life_s``)."""
    return cls([sys.executable, "-c", f"import signal, time\n{code}\ntime.sleep({life_s})"], stdin=subprocess.DEVNULL)


def spawner(ep, procs: list, peer_cls, make_proc):
    """A local worker's starter: each call starts make_proc() with a peer_cls peer speaking for it, kept in procs."""
    def spawn():
        p = make_proc()
        p.peer = peer_cls(ep, WID, pid=p.pid)
        procs.append(p)
        return p
    return spawn


def test_a_replaced_cpu_process_that_sigkill_does_not_end_holds_no_thread(model, caplog):
    """The CPU branch of replace_worker started the successor at once and reaped the killed process in a thread
    (asyncio.to_thread(proc.wait)) with no bound: a process SIGKILL does not end held that thread until it exited,
    and asyncio.run's shutdown of the default executor waited for it, so the controller's exit hung with it (here
    until the child ends by itself, 8 s). Now the reaping is polled, ends with the controller and is logged after
    worker_start_timeout_s."""
    procs: list[WorkerProc] = []
    timing = {}

    async def main():
        c = make_controller(model)
        c.config = dataclasses.replace(c.config, worker_start_timeout_s=0.5)
        ep = await c.start()

        add_local_worker(c, WID, spawner(ep, procs, ExitingPeer,
                                         lambda: child(WorkerProc if procs else StuckProc, 8.0)))
        try:
            assert await until(lambda: any(w.ready for w in c.gpu_workers), 5)
            old = c.hub.workers[WID.encode()]
            new = await asyncio.wait_for(c.replace_worker(old, MODEL), 5)
            assert new.ready and new.proc is procs[1] and procs[0].poll() is None  # the old one is still there
            await asyncio.sleep(0.8)  # past worker_start_timeout_s: the stuck process is logged
        finally:
            await c.close(drain=False)
        timing["closed"] = time.monotonic()

    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        try:
            run(main())
            exited_s = time.monotonic() - timing["closed"]
            still = procs[0].poll() is None
        finally:
            procs[0].release()
            stop(procs)
    assert still and exited_s < 2.0, f"asyncio.run returned {exited_s:.1f} s after the close (stuck process ended: " \
                                     f"{not still})"
    assert any("did not exit" in r.getMessage() and str(procs[0].pid) in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]


def test_a_cpu_worker_whose_old_process_ignores_sigterm_and_is_stopped_is_replaced(model):
    """(Checked in review, not a bug: the replacement sends SIGKILL, which a process can neither ignore nor escape
    by being stopped, and a CPU worker's successor starts without waiting for the exit.)"""
    async def main():
        c = make_controller(model)
        ep = await c.start()
        procs: list[WorkerProc] = []

        ignores_sigterm = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"
        add_local_worker(c, WID, spawner(ep, procs, Peer, lambda: child(WorkerProc, 30.0, ignores_sigterm)))
        try:
            assert await until(lambda: any(w.ready for w in c.gpu_workers), 5)
            os.kill(procs[0].pid, signal.SIGSTOP)
            t0 = time.monotonic()
            new = await asyncio.wait_for(c.replace_worker(c.hub.workers[WID.encode()], MODEL), 5)
            assert new.ready and new.proc is procs[1] and time.monotonic() - t0 < 3.0
            assert await until(lambda: procs[0].poll() is not None, 2) and procs[0].returncode == -signal.SIGKILL
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())
