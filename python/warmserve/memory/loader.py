"""A running pipelined load into a slot (see Slot.load)."""

from __future__ import annotations

import math
import time
from typing import Callable

from warmserve.errors import InvalidArgumentError, TimeoutError_

#: How often a waiting thread wakes to report progress and let Ctrl-C through.
_POLL_S = 0.05


def check_timeout(timeout_s: float | None) -> None:
    """Refuse a NaN timeout before a wait starts: it compares false with every deadline, so the wait would never
    end (found in review)."""
    if timeout_s is not None and math.isnan(timeout_s):
        raise InvalidArgumentError("LoadJob.wait: timeout_s is NaN: give seconds, or None to wait until the load ends",
                                   timeout_s=timeout_s)


class LoadJob:
    """Copies running in C++ threads; ``wait`` returns the bytes loaded or raises what went wrong."""

    def __init__(self, job, progress: Callable[[int, int], None] | None):
        self._job = job
        self._progress = progress
        self._reported = -1

    @property
    def progress(self) -> tuple[int, int]:
        """(bytes done, bytes total)."""
        return self._job.done_bytes, self._job.total_bytes

    @property
    def done(self) -> bool:
        """True once the job has finished, failed or been cancelled (rollback included)."""
        return self._job.finished

    @property
    def pages_mapped(self) -> int:
        """Pages the job answers for (0 until it has finished): those it mapped itself, less those it handed,
        failing, to an overlapping load still running, plus those such a load handed it; the ones it rolls back on
        failure."""
        return self._job.pages_mapped_by_job

    @property
    def pages_kept(self) -> int:
        """Of pages_mapped, those a failed or cancelled job left mapped because live pinned views made while it ran
        cover them (0 until it has finished); their contents are partial."""
        return self._job.pages_kept_by_views

    def cancel(self) -> None:
        """Stop copying; the job then unmaps the pages it had mapped. No effect once it has finished."""
        self._job.cancel()

    def _report(self) -> None:
        done, total = self.progress
        if self._progress is not None and done != self._reported:
            self._reported = done
            self._progress(done, total)

    def wait(self, timeout_s: float | None = None) -> int:
        """Block until the load ends; return its bytes. Raises CancelledError, the load's own error (an
        OutOfMemoryError, a file error as InvalidArgumentError/DriverError), or TimeoutError_ after timeout_s
        (the job keeps running). A NaN timeout is refused (found in review: it compared false with every
        deadline and the wait never ended)."""
        check_timeout(timeout_s)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            step = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
            finished = self._job.wait_for(step)
            self._report()
            if finished:
                break
            if deadline is not None and time.monotonic() >= deadline:
                done, total = self.progress
                raise TimeoutError_(
                    f"load not finished after {timeout_s} s ({done} of {total} bytes): wait longer or cancel()",
                    timeout_s=timeout_s, done_bytes=done, total_bytes=total,
                )
        return self._job.result()

    def __repr__(self) -> str:
        done, total = self.progress
        return f"LoadJob({done}/{total} bytes, done={self.done})"
