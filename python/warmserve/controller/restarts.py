"""Restarts of lost local workers and planned replacements of their processes (a cold start's fresh engine): the
part of the controller that starts worker processes again. ``WorkerRestarts`` is mixed into ``Controller``, whose
``__init__`` sets up the state used here (``restarting``, ``_restarts``, ``replacing``, ``engine_starts``). Also
how a local worker's process is stopped at the controller's close (``reap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time

from warmserve.controller.workers import WorkerRecord
from warmserve.controller.errors import NoWorkersError
from warmserve.controller.pids import pid_running
from warmserve.errors import WarmServeError, WorkerLostError, register
from warmserve.worker.forkserver import ForkedProcess, fresh_interpreters

log = logging.getLogger("warmserve.controller")


def exit_words(proc) -> str:
    """How a local worker's process ended, in words: a signal by name, and for SIGKILL that the kernel's OOM killer is
    its usual sender (found in review: workers killed for memory were only "lost: send failed", their restarts "did
    not join (status -9)", and nothing said why); a status with the reason its launcher gives (``exit_reason``: a
    forked worker whose fork server died, a Ray actor)."""
    status, reason = proc.poll(), getattr(proc, "exit_reason", "")
    if status is None or status >= 0:
        return f"status {status}: {reason}" if reason else f"status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"
    if -status == signal.SIGKILL and getattr(proc, "killed_by_controller", False):  # kill_marked: not the OOM killer
        return f"killed by {name} from the controller, which stopped it"
    if -status == signal.SIGKILL:
        return (f"killed by {name} (the kernel's OOM killer sends it when host memory or the container's memory "
                "limit runs out: see dmesg, or memory.events of the workers' cgroup)")
    return f"killed by {name}"


def log_tail(proc) -> str:
    """" <its log's path> (last line: ...)" for a local worker started with a log folder, else "". Found in review:
    a start error said only "see its log", the reason (an unusable cache folder, with its fix) in the file."""
    path = getattr(proc, "log_path", None)
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f" {path}"
    return f" {path} (last line: {lines[-1].strip()[:300]})" if lines else f" {path}"


def kill_marked(proc) -> None:
    """SIGKILL ``proc``, marked so that ``exit_words`` says the controller sent it, not the OOM killer; not marked
    when it had ended already (found in review: a forked worker's status reaches its fork server after its
    connection's end reaches the controller, so workers killed from elsewhere read as the controller's kills)."""
    if pid_running(getattr(proc, "pid", None)):
        try:
            proc.killed_by_controller = True
        except AttributeError:  # a launcher's process object with __slots__
            pass
    proc.kill()


#: How long closing waits for a local worker's process at each step (after Shutdown, SIGTERM, SIGKILL), seconds.
REAP_WAIT_S = 5.0
#: How long a worker that left after draining has to exit by itself before it is killed, seconds: it closes its
#: connection first, then frees its pool (found in review: every drained worker was killed at once, and its restart
#: then said "killed by SIGKILL (the kernel's OOM killer ...)").
DRAINED_EXIT_WAIT_S = 5.0


@register
class WorkerGoneForGoodError(WarmServeError):
    """A local worker's starter (``Controller.local_spawn``) cannot start it again, ever: the place it ran in is gone
    for good (its Ray node died, and a node that comes back is a new node). Its restart gives up on it."""


class WorkerRestarts:
    """Restart and replacement of local worker processes, on the Controller (``self``)."""

    def _said_hello(self, proc, ident: bytes | None) -> bool:
        """Whether the local worker process ``proc`` (under routing id ``ident``) has said Hello: it has a record,
        or its loss (which drops the record) started a restart, under way or whose process took its place in
        ``local_procs``."""
        if ident is None:
            return False
        w = self.hub.workers.get(ident)
        return ((w is not None and w.proc is proc) or ident in self.restarting
                or self.local_procs.get(ident) is not proc)

    def _workers_serve_or_come(self) -> bool:
        """Whether a worker serves, or one is on its way: restarting, being replaced, or admitted now (its Hello
        came: a new worker joining, a rejoining one). Without one, waiting requests fail at once. Found in review:
        admissions were not counted, so a request during a rejoin's admission got a 503, and the loss of the last
        ready worker failed the requests a joining one was a moment from serving."""
        # A draining worker serves nothing new; a local one is restarted once it has left (found in review: requests
        # waited for a draining remote worker, the only one, and got their 503 only when it left, 18-44 s on).
        return (any(w.ready and (not w.draining or w.proc is not None) for w in self.gpu_workers)
                or bool(self.restarting) or bool(self.replacing)
                or any(w.alive and not w.ready for w in self.hub.workers.values()))

    def _restart_later(self, lost: WorkerRecord) -> None:
        """Restart a lost local worker unless the controller closes or a restart under its routing id runs."""
        if not self.closing and lost.ident not in self.restarting:
            back = self.restarting[lost.ident] = asyncio.get_running_loop().create_future()
            # the metrics' workers{state="restarting"}, not "lost": found in review, a rolling restart by SIGTERM read
            # as a lost worker, firing any alert on lost workers each time (``views.collect``)
            (self.restarting_by_plan.add if lost.left_by_plan else self.restarting_by_plan.discard)(lost.ident)
            self._spawn(self._restart(lost, back))

    async def _restart(self, lost: WorkerRecord, back: asyncio.Future) -> None:
        """Start a lost local worker again, under the same routing id, until one is admitted (``back`` resolved by
        ``_admit``) or the controller closes. Attempt n waits min(restart_backoff_cap_s, restart_backoff_s * 2**n)
        first; the count resets once a worker has stayed up restart_reset_s since the admission its last restart
        ended with (``_restarts``: the count and that restart's ``back``). Not since ``lost.joined_s``: a rejoin or a
        planned replacement (a cold start's fresh engine) admits a new record under the id without a restart, and
        found in review, a crash 0.2 s after a rejoin counted on from a crash loop long over (restart 4 in a row, up
        to restart_backoff_cap_s of back-off). What the lost one held was re-placed by the driver; the new process
        joins empty, as a new GPU."""
        ident, cc = lost.ident, self.cc
        last = self._restarts.get(ident, (0, None))[1]
        # Not done: the last restart never got its worker admitted, so it has not been up since.
        if last is not None and last.done() and time.monotonic() - last.result().joined_s >= cc.restart_reset_s:
            self._restarts.pop(ident, None)
        proc, drained = lost.proc, lost.left_by_plan
        try:
            while not self.closing:
                if not drained:  # a try after the planned leave failed: lost now
                    self.restarting_by_plan.discard(ident)
                # A silent worker may still be running: stop it first, so its memory and device are free.
                if not await self._gone(proc, grace_s=DRAINED_EXIT_WAIT_S if drained else 0.0):
                    return
                n = self._restarts.get(ident, (0, back))[0]
                self._restarts[ident] = (n + 1, back)
                # 2**n as a float overflows past n = 1023 (about 10 h of failed restarts at the 30 s cap)
                delay = min(cc.restart_backoff_cap_s, cc.restart_backoff_s * 2 ** min(n, 60))
                if drained:
                    log.info("restarting %r, which left on SIGTERM (after draining, or at once), in %.1f s (its "
                             "process ended: %s)", lost, delay, exit_words(proc))
                else:
                    log.warning("restarting %r in %.1f s (restart %d in a row; its process ended: %s)", lost, delay,
                                n + 1, exit_words(proc))
                drained = False
                await asyncio.sleep(delay)
                spawn = self.local_spawn.get(ident)
                if self.closing or spawn is None or back.done():  # done: the last one joined after its deadline
                    return
                try:
                    proc = self.local_procs[ident] = await self._start_process(spawn)
                except WorkerGoneForGoodError as e:
                    self._give_up(lost, back, e)
                    return
                except WarmServeError as e:  # typed: its message says what was waited for and what to do
                    log.warning("could not restart %r (restart %d in a row): %s; trying again", lost, n + 1, e)
                    continue
                except Exception:
                    # Any failure, not only OSError: Ray's launcher raises Ray's own errors (its GCS restarting),
                    # and found in review, one of those ended this task for good and the worker never came back.
                    # The next try waits out the back-off like a process that did not join.
                    log.exception("could not restart %r (restart %d in a row); trying again", lost, n + 1)
                    continue
                deadline = time.monotonic() + self.config.worker_start_timeout_s
                joined = False
                while not (self.closing or back.done()) and proc.poll() is None:
                    w = self.hub.workers.get(ident)
                    mine = w is not None and w.proc is proc
                    if joined and not (mine and w.alive):
                        break  # it said Hello, then was lost while being admitted (its record is gone)
                    joined = joined or mine
                    # The deadline is for its Hello: its admission ends by itself (admitted, or lost when a call of
                    # _admit times out). Found in review: a Hello just before the deadline had the process killed
                    # here while _admit went on admitting it.
                    if not joined and time.monotonic() >= deadline:
                        break
                    await asyncio.wait({back}, timeout=0.1)
                if back.done():
                    # Admitted, whatever came after: the restart ended there, and a cold start's replace_worker may
                    # have retired that record and killed its process at once. Polling for a ready record missed it
                    # and spawned a second process under the id, whose Hello lost the replacement (CI flake).
                    log.info("%r is back (process %s)", back.result(), back.result().pid)
                    return
                if not self.closing:  # a close ends the wait: no failure to report
                    log.warning("restarted %r did not join (%s); see its log%s", lost, exit_words(proc), log_tail(proc))
        finally:
            # Only this restart's own entry: after its admission a new loss may have started the next restart.
            if self.restarting.get(ident) is back:
                del self.restarting[ident]

    @staticmethod
    async def _start_process(spawn):
        """Run a local worker's starter (``local_spawn``): on the loop (a fork or a Popen: fast), or, for one with an
        ``off_loop`` coroutine (Ray's, whose calls wait for Ray's head), that. Found in review: Ray's start on the
        loop, with Ray's head down, stalled every request until Ray ended the process."""
        off_loop = getattr(spawn, "off_loop", None)
        return spawn() if off_loop is None else await off_loop()

    def _give_up(self, lost: WorkerRecord, back: asyncio.Future, error: WorkerGoneForGoodError) -> None:
        """Stop restarting ``lost`` for good: its starter and last process are dropped (nothing restarts it again,
        close reaps nothing of it), and with no worker left or coming back the waiting requests fail now."""
        log.error("%r is not restarted any more: %s", lost, error)
        self.local_spawn.pop(lost.ident, None)
        self.local_procs.pop(lost.ident, None)
        if self.restarting.get(lost.ident) is back:
            del self.restarting[lost.ident]
        if not self._workers_serve_or_come():
            for model in self.models:
                self.driver.fail_waiting(model, NoWorkersError(
                    f"every worker is lost and {lost!r} cannot be started again ({error}); retry when workers "
                    f"rejoin", worker_id=lost.worker_id), self.now_s())

    def can_replace(self, w: WorkerRecord) -> bool:
        """Whether ``w``'s process may be replaced by a fresh one: a local worker, not being replaced or restarted
        (a cold start once killed the process ``_restart`` had just spawned: two processes under one id, CI). A
        restart ends at its worker's admission, so its process may be replaced from then on."""
        return (w.alive and w.proc is not None and w.ident in self.local_spawn and w.ident not in self.replacing
                and w.ident not in self.restarting and w in self.gpu_workers)

    async def replace_worker(self, old: WorkerRecord, model: str = "") -> WorkerRecord:
        """Replace a local worker's process with a fresh one on the same device, as a vanilla autoscaler starts a
        new engine for a cold start: the old process is stopped, a new one spawned (interpreter, torch, engine
        import, page pool) and admitted under the same routing id and the same GPU id. Planned, not a loss: the
        caller has checked that the worker holds nothing (no instance, prewarm or request), so nothing is failed or
        re-routed and the driver's state does not change. Returns the new record; raises WorkerLostError (and
        treats the GPU as lost, restarting it the ordinary way) when the new process does not come up, or a GPU
        worker's old one does not exit (``_exited``)."""
        ident, gid = old.ident, old.gpu_id
        joined = asyncio.get_running_loop().create_future()
        self.replacing[ident] = (old, joined)
        proc = None
        try:
            t0 = time.monotonic()
            # Wall time, for the entry: it is written once the fresh process is admitted, seconds later, and a
            # reader splitting starts at an instant (`bench replay`'s t = 0) needs when this one began.
            began_unix_s = time.time()
            self.hub.retire(old, "a fresh engine process replaces it")
            # Its process groups go with its process. Found in review: a group kept 'ready' with the retired record
            # was never rebuilt, and every later tp > 1 start on this block activated in a group the fresh process
            # never joined.
            self.groups.drop(old)
            # SIGKILL, not a graceful exit: it holds nothing (no instance, prewarm or request), the kernel and the
            # GPU driver free its memory at exit, and SIGTERM's orderly teardown (pool, interpreter) took ~0.5 s
            # here, a cost a vanilla autoscaler's start does not pay (its old engine exited at scale-in). A CPU
            # worker's successor starts at once (the kernel frees the old host pool meanwhile: 0.15-0.35 s here);
            # a GPU worker's waits for the exit, since its pool is sized from the device memory then free.
            kill_marked(old.proc)
            if old.device.startswith("cpu"):
                # Reaped by polling (_gone), logged when late. Found in review: a thread's unbounded wait held, for
                # a process SIGKILL does not end (uninterruptible sleep), a default-executor thread until it
                # exited, and asyncio.run's shutdown of that executor waited for it: the controller's exit hung.
                self._spawn(self._gone(old.proc, f"the replaced process of {old!r}"))
            else:
                await self._exited(old)
            t1 = time.monotonic()
            with fresh_interpreters():  # not forked from a preloaded process: the engine start is the cost
                proc = self.local_procs[ident] = await self._start_process(self.local_spawn[ident])
            deadline = t1 + self.config.worker_start_timeout_s
            while not joined.done():
                if self.closing:
                    raise WorkerLostError(f"the controller closed while {old!r} was being replaced",
                                          worker_id=old.worker_id)
                if proc.poll() is not None:
                    raise WorkerLostError(f"the fresh process of {old!r} exited with status {proc.returncode} "
                                          f"before it was admitted; see its log", worker_id=old.worker_id,
                                          status=proc.returncode)
                if time.monotonic() > deadline:
                    raise WorkerLostError(f"the fresh process of {old!r} was not admitted within "
                                          f"{self.config.worker_start_timeout_s:g} s (worker_start_timeout_s)",
                                          worker_id=old.worker_id)
                await asyncio.wait({joined}, timeout=0.05)
        except BaseException as e:
            self._replace_failed(old, proc, e)
            raise
        finally:
            self.replacing.pop(ident, None)
        new = joined.result()
        start_s, stop_s = time.monotonic() - t1, t1 - t0
        self.metrics.engine_start.observe(start_s)
        self.engine_starts.append({"gpu_id": gid, "model": model, "worker_id": new.worker_id, "old_pid": old.pid,
                                   "new_pid": new.pid, "stop_s": round(stop_s, 4), "start_s": round(start_s, 4),
                                   "began_unix_s": began_unix_s})
        log.info("%r: fresh engine process %d (was %d) in %.2f s (old one stopped in %.2f s)", new, new.pid,
                 old.pid, start_s, stop_s)
        return new

    async def _exited(self, old: WorkerRecord) -> None:
        """Wait for the killed process of ``old`` to exit, at most worker_start_timeout_s; raises WorkerLostError
        after that. Found in review: the wait had no bound, and a process that SIGKILL does not end (stuck in the GPU
        driver, in uninterruptible sleep) held the start for good, and with it every later start of its model (one
        creation in flight per model). Its GPU is then lost (``_replace_failed``); the restart that follows waits
        for the exit before it starts anything on the device."""
        limit = self.config.worker_start_timeout_s
        try:
            await asyncio.to_thread(old.proc.wait, limit)
        except subprocess.TimeoutExpired:
            raise WorkerLostError(f"the process {old.pid} of {old!r} did not exit within {limit:.0f} s of SIGKILL "
                                  f"(worker_start_timeout_s): its device is not free", worker_id=old.worker_id,
                                  pid=old.pid) from None

    async def _gone(self, proc, what: str = "a lost worker's process", grace_s: float = 0.0) -> bool:
        """Kill ``proc`` (``what``: a lost worker's process, or a replaced one's) and wait until it has exited; False
        if the controller closes first. Polled, not a blocking wait: a process SIGKILL does not end (stuck in the GPU
        driver) held a thread, the restart and the controller's exit for good (found in review); nothing starts on
        its device meanwhile. Logged once when it has not exited within worker_start_timeout_s. ``grace_s``: how
        long it may take to exit by itself first (a worker that left after draining)."""
        until_s = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < until_s and not self.closing:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            kill_marked(proc)
        limit = self.config.worker_start_timeout_s
        late_s: float | None = time.monotonic() + limit
        while proc.poll() is None:
            if self.closing:
                log.warning("process %s did not exit after SIGKILL; the controller closes without it", proc.pid)
                return False
            if late_s is not None and time.monotonic() >= late_s:
                late_s = None
                log.warning("%s (process %s) did not exit within %.0f s of SIGKILL (worker_start_timeout_s): it is "
                            "stuck in the kernel (a device driver, a hung mount), and its memory stays taken until "
                            "it exits; see the host's kernel log", what, proc.pid, limit)
            await asyncio.sleep(0.1)
        return True

    def _replace_failed(self, old: WorkerRecord, proc, error: BaseException) -> None:
        """A replacement that did not come up: its GPU is lost after all (whatever was starting there fails with
        it), and the worker is restarted with back-off as a new GPU, like any lost local worker."""
        log.warning("replacing %r failed: %s", old, error)
        ident = old.ident
        w = self.hub.workers.get(ident)
        if w is not None and w.proc is proc:
            self.hub.retire(w, "its replacement failed")
        if proc is not None and proc.poll() is None:
            kill_marked(proc)
        self.metrics.workers_lost.inc()
        if old in self.gpu_workers:
            self.gpu_workers.remove(old)
        if self.by_gpu.get(old.gpu_id) is old:
            del self.by_gpu[old.gpu_id]
        if proc is not None:
            old.proc = proc  # what _restart stops first
        self._restart_later(old)
        if old.gpu_id is not None:
            self.driver.lose_gpus([old.gpu_id], self.now_s())


def reap_now(proc, graceful: bool):
    """``reap`` on the calling thread: None, or the exception it raised."""
    try:
        return reap(proc, graceful)
    except Exception as e:
        return e


def reap(proc, graceful: bool = True) -> None:
    """Wait for a local worker told to shut down (``graceful``); stop it when it does not."""
    if graceful:
        try:
            proc.wait(timeout=REAP_WAIT_S)
            return
        except Exception:  # still running after Shutdown: stop it
            pass
    if proc.poll() is not None:
        return
    proc.terminate()
    if isinstance(proc, (subprocess.Popen, ForkedProcess)):
        # A stopped process (SIGSTOP, a frozen job) keeps SIGTERM pending until it runs again: found in review,
        # the wait below ran out for nothing before the SIGKILL. SIGCONT lets it take the SIGTERM and exit now.
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGCONT)  # not to a pid already reaped
    try:
        proc.wait(timeout=REAP_WAIT_S)
    except Exception:
        proc.kill()
        try:
            proc.wait(timeout=REAP_WAIT_S)
        except subprocess.TimeoutExpired:  # stuck in the GPU driver: waiting on would hang the shutdown for good
            # %s: a Ray worker's pid is None until its Hello
            log.warning("worker process %s did not exit after SIGKILL; left behind", getattr(proc, "pid", None))
