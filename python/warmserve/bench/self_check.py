"""A benchmark's checks of what it measured (the bytes loaded are the checkpoint's, a grow mapped what it asked for):
statements, not ``assert``, which ``python -O`` strips. Found in review: `bench switch --parts kv` called its KV grow
inside an assert, so under -O it timed a grow that never ran and reported "grow 0.002 ms, give back 0.020 ms (0
maps)" per GiB, a give-back goal met by nothing; every other check of the benchmarks vanished with it."""

from __future__ import annotations

from warmserve.errors import WarmServeError


class MeasurementCheckError(WarmServeError):
    """A benchmark's check of its own measurement failed: its figures would be wrong, so it reports none."""


def check(ok: bool, what: str, **fields) -> None:
    """MeasurementCheckError saying ``what`` (the check that failed) unless ``ok``."""
    if not ok:
        raise MeasurementCheckError(f"{what}: a check of the measurement failed, so its figures are not reported",
                                    **fields)
