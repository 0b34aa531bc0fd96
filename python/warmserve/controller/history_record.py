"""The load history a controller measures, kept in a file (``ControllerConfig.history_record_path``,
``--record-history``): the next start reads it as its ``--history`` and forecasts from the days this one served,
instead of starting over from none.

Each window's (avg, peak) in-flight requests reaches ``HistoryRecord.window`` from the policy as the window closes
(``Demand.window_sink``), on the driver's clock; the file holds Unix-time starts, the CSV form ``read_history``
reads. The starting history's rows are kept beside the measured ones (a measured window replaces a row of the same
model and start), rows older than ``RECORD_KEEP_DAYS`` before the newest are dropped (the starting history's counted
as if the time the controller was down had not passed). The file is rewritten whole and atomically
(``outputs.write_atomic``) by a thread of its own after each window closes, so a crash leaves the last complete
file and the event loop never waits on the disk; ``close`` writes the last windows before the controller stops.
The window open at the stop is not written (half a window would read as a whole one at the next start).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import threading
import time

import numpy as np

from warmserve.errors import InvalidArgumentError

log = logging.getLogger("warmserve.controller")

#: Days of windows the record file keeps, counted back from its newest. Two weeks: the forecasters fit the last
#: days' daily season and the controller's clock starts a week back (clock.CLOCK_DAYS_BACK); at 300 s windows a
#: model is about 4,000 rows, rewritten once per window.
RECORD_KEEP_DAYS = 14


def check_record_path(record_path: str, history_path: str) -> None:
    """Refuse a record file that would overwrite a history nobody asked to continue, or that cannot be written:
    found before any worker starts, not at the first window's end."""
    if not record_path:
        return
    # named both ways: the same check serves `serve` and warmserve.Cluster (found in review: a Cluster user was
    # told of a flag they never passed)
    what = f"--record-history (warmserve.Cluster: history_record_path=) {record_path!r}"
    folder = os.path.dirname(os.path.abspath(record_path))
    if os.path.isdir(record_path):
        raise InvalidArgumentError(f"{what} is a directory: give a file path (e.g. "
                                   f"{os.path.join(record_path, 'history.csv')})", path=record_path)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise InvalidArgumentError(f"{what}: its folder {folder!r} does not exist or is not writable: create it, or "
                                   "record elsewhere", path=record_path)
    same = bool(history_path) and os.path.exists(history_path) and os.path.exists(record_path) \
        and os.path.samefile(history_path, record_path)
    if record_path.lower().endswith(".json"):
        # The record is CSV: a .json path would be read back as JSON by --history and refused at the next start
        # (found in review: `--history F --record-history F` with F a .json file failed on its second start).
        raise InvalidArgumentError(f"{what}: the record is written as CSV; give a .csv path (a JSON --history is "
                                   "read, and its rows kept, whatever the record's name)", path=record_path)
    if os.path.exists(record_path) and not same:
        raise InvalidArgumentError(
            f"{what} exists and is not the --history file, so its rows would be lost: "
            f"to go on from it, give it as --history too (--history {record_path} --record-history {record_path}; "
            "warmserve.Cluster: history_path= as well as history_record_path=); else remove it or record to a new "
            "file", path=record_path)


def hold_record_lock(path: str) -> int | None:
    """An exclusive flock on ``.<name>.lock`` beside the record file, held until ``HistoryRecord.close`` (or the
    process's end); InvalidArgumentError naming the holder's pid when another process holds it. Found in review (two
    deployments side by side, `--history F --record-history F` in both): each rewrote the file with its own rows
    every window, so a window's load one server measured was overwritten by the other's idle window, unsaid. The
    lock is on a sibling file, as the record is replaced by a rename at each write. None where no lock can be made
    (a read-only folder fails at the first write, as before)."""
    from warmserve.outputs import LockHeld, flock_exclusive

    lock_path = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.lock")
    try:
        return flock_exclusive(lock_path)
    except LockHeld as e:
        holder = str(e.pid) if e.pid else "unknown"
        raise InvalidArgumentError(
            f"the load history record {path!r} is being written by another running warmserve (pid {holder}, which "
            f"holds {lock_path}): two servers recording into one file overwrite each other's windows. Fix: a record "
            "file of its own for each server (--record-history, warmserve.Cluster: history_record_path=), or stop "
            "the other one first", path=path, holder_pid=holder) from None


class HistoryRecord:
    """The windows of one controller's run and of the history it started with, written to ``path``."""

    def __init__(self, path: str, origin_unix_s: float, history: dict | None = None,
                 started_unix_s: float = -math.inf):
        """``started_unix_s``: when the controller began to measure; a window that began before it is not written
        (``window``)."""
        self.path = path
        self._lock_fd = hold_record_lock(path)  # first: a refused record starts no thread
        self.origin_unix_s = origin_unix_s
        self.started_unix_s = started_unix_s
        #: (model, Unix start) -> (avg, peak): the starting history's known windows, then the measured ones.
        self._rows: dict[tuple[str, float], tuple[float, float]] = {}
        known = {m: (np.asarray(st, float)[ok], np.asarray(a, float)[ok], np.asarray(p, float)[ok])
                 for m, (st, a, p) in (history or {}).items() for ok in [~np.isnan(np.asarray(a, float))]}
        #: The time between the starting history's newest row and this run's start, seconds: its rows are kept as if
        #: that long younger (found in review: after 15 days down, the first window's rewrite dropped all 30,240
        #: rows the forecasts had just started from, unsaid, and the next start had none).
        seeds = [float(st[st < started_unix_s].max()) for st, _, _ in known.values() if (st < started_unix_s).any()]
        self._gap_s = max(0.0, started_unix_s - max(seeds)) if seeds else 0.0
        self._said_dropped = False
        # The starting rows past the kept days are left out here rather than at the first write (which says them):
        # found in the uptime review, a year of 8 models' windows (841k rows) held as this table took the controller
        # from 78 to 361 MB until the first window closed, 300 s on. Each row left out is one the first write drops
        # (its cut is from a newest row no older than this one).
        newest = max((float(st.max()) for st, _, _ in known.values() if len(st)), default=math.inf)
        #: (rows left out at the start, the oldest one's start), told with the first write's drop
        self._dropped_at_start: tuple[int, float] = (0, math.inf)
        for model, (starts, avg, peak) in known.items():  # one row a start (``read_history``)
            keep = starts + np.where(starts < started_unix_s, self._gap_s, 0.0) >= newest - RECORD_KEEP_DAYS * 86400
            if not keep.all():
                n, oldest = self._dropped_at_start
                self._dropped_at_start = (n + int((~keep).sum()), min(oldest, float(starts[~keep].min())))
            for s, a, p in zip(starts[keep].tolist(), avg[keep].tolist(), peak[keep].tolist()):
                self._rows[(model, s)] = (a, p)
        # One lock over the rows and the flags: ``window`` runs on the event loop, the writes on the thread.
        self._cond = threading.Condition()
        self._dirty = False
        self._closing = False
        #: The last write failed: said once (``_failed``), and the stop writes again though no window closed since.
        self._failing = False
        #: Files written so far (a test reads it to wait for one).
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="warmserve-history-record", daemon=True)
        self._thread.start()

    def window(self, model: str, window_start_s: float, avg: float, peak: float) -> None:
        """One closed window of ``model`` starting at ``window_start_s`` on the driver's clock (the policy's
        ``window_sink``). A window with no data (NaN) is not written: the file lists the windows it knows; nor is
        one of an impossible load (``History.observe`` warned of it), which would make the next start refuse the
        file."""
        from warmserve.policy.history import impossible_loads

        if math.isnan(avg) or math.isnan(peak) or impossible_loads(np.array([avg]), np.array([peak]))[0]:
            return
        start_unix_s = round(self.origin_unix_s + window_start_s, 3)
        if start_unix_s < self.started_unix_s:
            # Measured in part: the policy's meter merges the part before the start with the history's value, or
            # its forecast, which would be read back at the next start as measured (found in review: a fractional
            # peak, the forecast's, written for a window the server saw idle). A stop leaves its open window out so.
            return
        with self._cond:
            self._rows[(model, start_unix_s)] = (avg, peak)
            self._dirty = True
            self._cond.notify()

    def close(self) -> None:
        """Write what is not written yet and stop the thread (waits for it: the controller is stopping)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock: another server may record into the file now
            self._lock_fd = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._closing:
                    self._cond.wait()
                if not self._dirty and not (self._closing and self._failing):
                    return
                closing = self._closing
                self._dirty = False
                n_old, oldest, newest = self._drop_old()
                if self._dropped_at_start[0] and not self._said_dropped:
                    n_old, oldest = n_old + self._dropped_at_start[0], min(oldest, self._dropped_at_start[1])
                if n_old and not self._said_dropped:
                    self._said_dropped = True
                    log.info("load history record %s: %d rows dropped, the oldest from %.1f days back; it keeps the "
                             "last %d days of windows, the time the controller was down not counted (said once)",
                             self.path, n_old, (newest - oldest) / 86400, RECORD_KEEP_DAYS)
                rows = sorted(self._rows.items())
            try:
                self._write(rows)
            except Exception as e:  # a full disk must not stop serving (nor this thread): the next window tries again
                self._failed(e, closing)
                if closing:
                    return
            else:
                self.writes += 1
                if self._failing:
                    self._failing = False
                    log.info("load history record %s written again, with the windows the failed writes held",
                             self.path)

    def _failed(self, e: Exception, closing: bool) -> None:
        """Say a failed write: once until a write succeeds again (found in review: a full disk said it at every
        window's end, with no fix), and at the stop, which loses the windows not written."""
        why = f"{type(e).__name__}: {e}"
        fix = (f"free space on its disk or make {os.path.dirname(os.path.abspath(self.path))} writable, or record to "
               "another file (--record-history; warmserve.Cluster: history_record_path=)")
        if closing:
            log.warning("load history record %s: the last write at the stop failed (%s), so the windows measured "
                        "since its last complete write are lost; the file holds what it held. Fix: %s", self.path,
                        why, fix)
        elif not self._failing:
            log.warning("could not write the load history to %s (%s); serving goes on and the measured windows are "
                        "kept in memory, each window's end tries again and the stop once more (said once, until a "
                        "write succeeds). Fix: %s", self.path, why, fix)
        self._failing = True

    def _drop_old(self) -> tuple[int, float, float]:
        """Drop the rows older than RECORD_KEEP_DAYS before the newest (a starting row counted the time the
        controller was down younger); (how many, the oldest one's start, inf for none; the newest row's start).
        Under ``_cond``."""
        if not self._rows:
            return 0, math.inf, -math.inf
        newest = max(s for _, s in self._rows)
        cut = newest - RECORD_KEEP_DAYS * 86400
        old = [k for k in self._rows if k[1] + (self._gap_s if k[1] < self.started_unix_s else 0.0) < cut]
        for key in old:
            del self._rows[key]
        return len(old), min((k[1] for k in old), default=math.inf), newest

    def _write(self, rows: list) -> None:
        from warmserve.outputs import write_atomic

        def lines(f):
            out = csv.writer(f, lineterminator="\n")  # quotes a model name with a comma in it
            out.writerow(("model", "window_start_s", "avg", "peak"))
            # 15 digits: a Unix start to the millisecond; 9 for loads, read back as the same window's load
            out.writerows((m, f"{s:.15g}", f"{a:.9g}", f"{p:.9g}") for (m, s), (a, p) in rows)

        write_atomic(self.path, lines, binary=False)


def starting_history(cc) -> dict | None:
    """The history a cluster starts with (``ControllerConfig.history_path``, None without one), once its record
    file (``history_record_path``) is found writable and safe to write (``check_record_path``)."""
    from warmserve.controller.history_file import read_history

    check_record_path(cc.history_record_path, cc.history_path)
    if not cc.history_path:
        return None
    if not os.path.lexists(cc.history_path) and cc.history_record_path and \
            os.path.abspath(cc.history_path) == os.path.abspath(cc.history_record_path):
        # the README's restart recipe on its first start, or after runs too short to close a window: nothing
        # recorded yet, so no history (found in review: the fixed command line of a service refused to start)
        log.info("history %s does not exist yet: starting without one; this run's windows are recorded there",
                 cc.history_path)
        return None
    history = read_history(cc.history_path)
    # found in review: a restart from its record said nothing of what it read
    rows = [s for s, _, _ in history.values()]
    newest = max((float(s.max()) for s in rows if len(s)), default=None)
    # found in the clock review: a record written before the clock was set back said "the newest from -3.0 h ago"
    age_h = (time.time() - newest) / 3600 if newest is not None else 0.0
    log.info("history %s: %d rows of %d model(s) read%s", cc.history_path, sum(len(s) for s in rows), len(history),
             "" if newest is None else f", the newest from {age_h:.1f} h ago" if age_h >= 0 else
             f", the newest {-age_h:.1f} h ahead of this machine's clock (written before it was set back?)")
    return history


def attach(ctl, history: dict | None) -> HistoryRecord | None:
    """The Controller ``ctl``'s record of its measured windows, fed by its policy (None without a record file)."""
    if not ctl.cc.history_record_path:
        return None
    # the policy clock read as Unix time: when the controller began to measure, on the clock its windows use
    record = HistoryRecord(ctl.cc.history_record_path, ctl.clock_origin_s, history,
                           started_unix_s=ctl.clock_origin_s + ctl.now_s())
    ctl.policy.window_sink = record.window
    return record
