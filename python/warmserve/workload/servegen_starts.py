"""Where a ServeGen replay can start: the recipe's own refusal (``recipes._check_replay``) asked before the workload
is built, for callers that place the replay in their own terms (`warmserve simulate --start-hour` on ServeGen's
last day), so that they can name their flags and a value of them that works."""

from __future__ import annotations

from warmserve.workload import servegen as sg
from warmserve.workload.recipes import _replay_problem, _series_data, servegen_series


class ReplayStarts:
    """The replays of ``n_models`` series of the vendored data (``repeat_days`` as the caller passes the recipe) over
    ``duration_s`` after ``pre_s`` of warm-up, with ``history_days``. Raises InvalidArgumentError, as the recipe
    does, where the data has fewer series than ``n_models``."""

    def __init__(self, n_models: int, duration_s: float, pre_s: float, history_days: int, repeat_days: int):
        self.data = _series_data(servegen_series(n_models, sg.LANGUAGE_MODELS, None, False, repeat_days))
        self.duration_s, self.pre_s, self.history_days = duration_s, pre_s, history_days

    def problem(self, start_s: float) -> str | None:
        """Why ``servegen_workload`` would refuse the replay from ``start_s``, or None where it would not."""
        why = _replay_problem(self.data, start_s, self.duration_s, self.pre_s, self.history_days)
        return None if why is None else why[0]

    def fitting(self, start_s: float, lo_s: float, hi_s: float):
        """The starts in [lo_s, hi_s] on ``start_s``'s 10-minute phase where the replay fits, nearest first."""
        ks = range(-int((start_s - lo_s) // sg.WINDOW_S), int((hi_s - start_s) // sg.WINDOW_S) + 1)
        for k in sorted(ks, key=abs):
            c = start_s + k * sg.WINDOW_S
            if lo_s <= c <= hi_s and self.problem(c) is None:
                yield c
