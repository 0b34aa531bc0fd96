"""The job of a load through the host checkpoint cache (memory/host_cache.py): the C++ copies, and beside them the
thread that reads what no source covers into the entries being filled; it publishes those entries when both end
well and deletes them otherwise."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from warmserve.errors import TimeoutError_
from warmserve.memory.cache_entry import GapFill, unlink_if_there
from warmserve.memory.loader import LoadJob, check_timeout

if TYPE_CHECKING:
    from warmserve.memory.host_cache import HostCheckpointCache

log = logging.getLogger("warmserve.memory")


#: How long a cached load dropped without wait() is waited for in its finalizer after it was cancelled, seconds.
_DEL_STOP_TIMEOUT_S = 30.0


class CachedLoadJob(LoadJob):
    """A LoadJob that publishes the cache entries it filled when it ends well, and deletes them otherwise. Its
    fills' gaps (the file bytes no source covers) are read on a thread beside the job (``GapFill``): the load
    ends when both have."""

    def __init__(self, job, progress, cache: HostCheckpointCache, fills, used):
        super().__init__(job, progress)
        self._cache, self._fills, self._used = cache, fills, used
        self._gaps: GapFill | None = None
        self._settled = False

    def _start_gaps(self, work) -> None:
        try:
            self._gaps = GapFill(work)
        except BaseException:  # no thread (EAGAIN): the job stops and its fills go, as a failed load's
            self._stop()
            self._settle(ok=False)
            raise

    @property
    def done(self) -> bool:
        return self._job.finished and (self._gaps is None or self._gaps.finished)

    def cancel(self) -> None:
        """Stop the copies and the gaps' read. Once the copies have ended the load stands (wait() returns its
        bytes) and only its fills go."""
        if self._gaps is not None:
            self._gaps.stop.set()
        super().cancel()

    def wait(self, timeout_s: float | None = None) -> int:
        check_timeout(timeout_s)  # before the try: a refused argument must not end the load as its error would
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            n = super().wait(timeout_s)
            if self._gaps is not None and not self._gaps.join(_left(deadline)):
                raise TimeoutError_(f"load not finished after {timeout_s} s (its copies are, the rest of its cache "
                                    "fill is not): wait longer or cancel()", timeout_s=timeout_s)
        except TimeoutError_:
            raise  # still running: nothing to settle yet
        except BaseException:
            # the load's own error ends it; a progress callback that raised or an interrupt in the poll does
            # not: its copies may still read the entries, which must not be unregistered under a DMA
            self._stop()
            self._settle(ok=False)
            raise
        if not self._settled:
            # The C++ job keeps the entries' arrays it read from alive until it is dropped, and a mapping with a
            # live array cannot be closed: a caller that keeps the finished job (a ModelLoad does) would keep
            # every entry it read mapped after eviction. Its numbers stay; its references go first.
            self._job = _Ended(self._job, n)
        self._settle(ok=True)
        return n

    def _stop(self, timeout_s: float | None = None) -> bool:
        """Cancel the job and the gaps' thread if they still run and wait until both have ended (the job's
        rollback included), at most ``timeout_s``; False when they had not ended by then."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self._gaps is not None:
            self._gaps.stop.set()
        if not self._job.finished:
            self._job.cancel()
            while not self._job.wait_for(1.0):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        return self._gaps is None or self._gaps.join(_left(deadline))

    def _settle(self, ok: bool) -> None:
        if self._settled:
            return
        self._settled = True
        if self._job.finished and not isinstance(self._job, _Ended):
            # ended badly (wait() swaps an ended-well job itself): the C++ job's references to the entries' arrays
            # go first, or the aborted fill's mapping cannot close (found in review: BufferError in release(), the
            # deleted fill's host memory held until a garbage collection, past capacity_bytes)
            self._job = _Ended.of(self._job)
        filled = [e for e, _ in self._fills]
        published = []
        for entry, lock_fd in self._fills:
            gap_error = next((err for e, err in (self._gaps.failed if self._gaps else ()) if e is entry), None)
            if ok and gap_error is not None:
                log.warning("host cache: the bytes of %s that the load does not read could not be read into its "
                            "fill (%s); the next load fills it again", entry.path, gap_error)
            elif ok:
                try:
                    self._cache._publish(entry, lock_fd)
                    published.append(entry)
                    continue
                except OSError as e:
                    # The slot's bytes all landed: only this entry is not cached. Aborted like a failed fill, and the
                    # rest still published (found in review: one failed rename, its .fill removed by someone cleaning
                    # /dev/shm, left the later fills locked for good and failed the load untyped).
                    log.warning("host cache: the fill of %s could not be published (%s); the next load fills it "
                                "again", entry.path, e)
            self._cache._abort_fill(entry, lock_fd)
        self._cache._done_with([e for e in self._used if all(e is not f for f in filled)] + published)

    def __del__(self):
        # Dropped without wait(): a fill the job was doing must not be published half done, its lock must go (the
        # next worker fills again), and the entries it read are let go of (their users count, and for entries
        # made stale meanwhile their mapping and DMA registration), once the job has stopped reading them.
        if not self._settled:
            # bounded: a finalizer may run anywhere, and a cancelled job ends within a chunk's copy. One that has
            # not ended keeps its entries (registered and mapped: a leak, not a DMA from unregistered memory), but
            # its fill is never published and its lock goes, so the next worker fills again.
            if self._stop(timeout_s=_DEL_STOP_TIMEOUT_S):
                self._settle(ok=False)
                return
            self._settled = True
            for entry, lock_fd in self._fills:
                unlink_if_there(entry.path[: -len(".bin")] + ".fill")
                os.close(lock_fd)


def _left(deadline: float | None) -> float | None:
    """Seconds to ``deadline`` (a time.monotonic() value), none below 0; None without one."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _Ended:
    """What a finished C++ load job answers (LoadJob reads these), without its references to the buffers it read."""

    finished = True

    def __init__(self, job, result: int, error: BaseException | None = None):
        self.done_bytes, self.total_bytes = job.done_bytes, job.total_bytes
        self.pages_mapped_by_job, self.pages_kept_by_views = job.pages_mapped_by_job, job.pages_kept_by_views
        self._result, self._error = result, error
        self.wait_for = lambda timeout_s: True
        self.cancel = lambda: None

    def result(self) -> int:
        if self._error is not None:
            raise self._error
        return self._result

    @classmethod
    def of(cls, job) -> "_Ended":
        """A finished job's answers, its error included."""
        try:
            return cls(job, job.result())
        except BaseException as e:  # noqa: BLE001 (kept for result(); its frames, which hold the job, are not)
            return cls(job, 0, e.with_traceback(None))
