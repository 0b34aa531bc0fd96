"""Statistical forecast fits made in a background process, for the live controller.

The controller's policy ticks run on its event loop, which also hears the workers (they are declared lost after
``worker_timeout_s``, 3 s, of silence). One STL fit grows with the square of the windows a day: 0.5-0.8 s at
300 s windows, 3.5 s at 120 s, 5.6-20 s at 60 s (found in review: a tick blocked the loop that long, and ``auto``
made five fits in one tick). A thread does not help: statsmodels' STL holds the GIL for the whole fit (measured:
the main thread got no turn for the 0.5 s of a fit). So one child process makes the fits, a day's fits of one
series per job, and ``ModelForecaster`` adopts them at a later tick; the paper forecast stands in meanwhile.

The simulator does not use this: it fits inline (``ModelForecaster.predict``'s ``may_fit`` budget), so its runs
stay deterministic.
"""

from __future__ import annotations

import logging
import pickle
import queue
import signal
import subprocess
import sys
import threading
import weakref

import numpy as np

log = logging.getLogger(__name__)

#: Background processes that may die (an OOM kill, say) before the forecasts stay on the paper method for good.
MAX_RESTARTS = 3
#: How long a closing process is given to end after its input closes, before it is killed (s).
STOP_WAIT_S = 5.0


def fit_day(method: str, y: np.ndarray, period: int, r: int, n_resid: int, fit_days: int, seed: dict):
    """The fits a forecast of the day from index ``r`` needs, as ``ModelForecaster.fit_day`` makes them (the
    backtest reuses the fits in ``seed``). Returns (``auto``'s pick or None, the new fits, the fit errors)."""
    from warmserve.policy.forecast import ModelForecaster

    fc = ModelForecaster(method, period, n_resid=n_resid, fit_days=fit_days)
    fc._fits = dict(seed)
    errors: list[Exception] = []
    fc._fit_error = errors.append  # the controller logs them, once per series
    fc.fit_day(y, r)
    new = {k: v for k, v in fc._fits.items() if k not in seed}
    return (fc._chosen.get(r) if method == "auto" else None), new, errors


def main() -> None:
    """The background process (``BackgroundFits`` starts it): jobs pickled on stdin, one at a time,
    results pickled on stdout, until stdin ends (the controller closed it, or its process is gone).

    A plain child process, not multiprocessing's spawn: spawn runs the parent's ``__main__`` file again in the
    child, and a user's script without a ``__name__`` guard (the README's own example) started a second Cluster
    there and failed (found in review: the fits never came)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the server is for the server to handle
    jobs, results = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed must not land among the pickled results
    while True:
        try:
            item = pickle.load(jobs)
        except EOFError:
            return
        if item is None:
            return
        job, args = item
        try:
            out = ("ok", fit_day(*args))
        except Exception as e:  # noqa: BLE001 - a bug here must reach the controller's log, not end the fits
            out = ("error", f"{type(e).__name__}: {e}")
        try:
            pickle.dump((job, out), results)
            results.flush()
        except BrokenPipeError:  # the controller is gone
            return


def _write_jobs(proc: subprocess.Popen, jobs: queue.SimpleQueue) -> None:
    """Feed ``jobs`` to the process's stdin off the event loop (a pipe full with a long fit running would block
    its writer); None closes stdin, which ends the process."""
    try:
        while (item := jobs.get()) is not None:
            pickle.dump(item, proc.stdin)
            proc.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):  # the process died, or was closed under us
        pass
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


def _read_results(proc: subprocess.Popen, results: queue.SimpleQueue) -> None:
    """Hand the process's pickled results to ``results`` until its stdout ends."""
    try:
        while True:
            results.put(pickle.load(proc.stdout))
    except (EOFError, OSError, ValueError, pickle.UnpicklingError):
        pass


def _stop(proc: subprocess.Popen | None, jobs: queue.SimpleQueue | None) -> None:
    if jobs is not None:
        jobs.put(None)  # jobs not taken yet are dropped: nobody waits for them
    if proc is not None and proc.poll() is None:
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:  # a fit still running: its result is not wanted
            proc.kill()
            proc.wait()


class BackgroundFits:
    """One background process making ``fit_day`` jobs in turn; started at the first job."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._jobs: queue.SimpleQueue | None = None
        self._results: queue.SimpleQueue | None = None
        self._next = 0
        self._pending: set[int] = set()
        self._done: dict[int, tuple] = {}
        self._restarts = 0
        self._finalizer = None

    def available(self) -> bool:
        """False once the process died MAX_RESTARTS times: no more jobs are taken."""
        return self._restarts <= MAX_RESTARTS

    def _start(self) -> None:
        self._jobs, self._results = queue.SimpleQueue(), queue.SimpleQueue()
        # stderr inherited: a fit's traceback reaches the server's log output
        # -c, not -m: the package (warmserve.policy) imports this module, and runpy warns at a second copy of it
        self._proc = subprocess.Popen([sys.executable, "-c", "from warmserve.policy.fitting import main; main()"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for target, q, name in ((_write_jobs, self._jobs, "jobs"), (_read_results, self._results, "results")):
            threading.Thread(target=target, args=(self._proc, q), daemon=True,
                             name=f"warmserve-forecast-fits-{name}").start()
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._jobs)

    def submit(self, method: str, y: np.ndarray, period: int, r: int, n_resid: int, fit_days: int,
               seed: dict) -> int:
        """Queue a ``fit_day`` job (never blocks); its id for ``take``."""
        if self._proc is None:
            self._start()
        self._next += 1
        self._pending.add(self._next)
        self._jobs.put((self._next, (method, np.array(y, dtype=np.float64), period, r, n_resid, fit_days, seed)))
        return self._next

    def _poll(self) -> None:
        while self._pending:
            try:
                job, out = self._results.get_nowait()
            except queue.Empty:
                break
            if job in self._pending:
                self._pending.discard(job)
                self._done[job] = out
        if self._pending and self._proc.poll() is not None:
            self._restarts += 1
            log.warning("the background process of forecast fits exited (status %s) with %d jobs; %s",
                        self._proc.returncode, len(self._pending),
                        "they are asked again" if self.available() else
                        "the paper forecast stands in from now on")
            for job in self._pending:
                self._done[job] = ("lost", f"the fitting process exited with status {self._proc.returncode}")
            self._pending.clear()
            self._finalizer()
            self._proc = None

    def take(self, job: int) -> tuple | None:
        """The result of ``job``: ("ok", fit_day's return), ("error", message), ("lost", why); None while it runs.
        A result is handed out once."""
        self._poll()
        return self._done.pop(job, None)

    def forget(self, job: int) -> None:
        """``job``'s result is no longer wanted: dropped when it comes."""
        self._pending.discard(job)
        self._done.pop(job, None)

    def close(self) -> None:
        """End the process (it also ends when the controller's process goes: its stdin closes)."""
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._pending.clear()
