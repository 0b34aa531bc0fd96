"""An unanswered request must never score better in TTFT statistics than the same request answered late."""

import numpy as np

from warmserve.sim.config import SimConfig
from warmserve.sim.metrics import summarize

STARTS = {"total": 0, "hit": 0, "loading": 0, "cold": 0}


def _summary(first_s: np.ndarray, arrival_s: np.ndarray) -> dict:
    n = len(arrival_s)
    return summarize("p", ["m"], arrival_s, first_s, first_s + 1.0, np.zeros(n, np.int32), np.full(n, 10),
                     np.full(n, 1.0), duration_s=1200.0, end_s=1800.0, gpu_seconds=0.0, starts=STARTS, evictions=0,
                     unanswered_ttft_s=SimConfig().unanswered_ttft_s, n_gpus=1).summary


def test_unanswered_request_counts_at_least_as_late_as_a_late_answer():
    # review's case: 100 requests, the last two answered 1500 s late vs never answered (run ends at 1800 s)
    arrival_s = np.linspace(0.0, 99.0, 100)
    late = arrival_s + 0.1
    late[-2:] = arrival_s[-2:] + 1500.0
    never = arrival_s + 0.1
    never[-2:] = np.nan
    s_late, s_never = _summary(late, arrival_s), _summary(never, arrival_s)
    assert s_never["unanswered"] == 2
    assert s_never["ttft_p99_s"] >= s_late["ttft_p99_s"] >= 1500.0
    assert s_never["ttft_mean_s"] >= s_late["ttft_mean_s"]
    # waited from arrival to the end of the run: 1800 - 98 and 1800 - 99
    ttft = np.where(np.isnan(never), 1800.0 - arrival_s, never - arrival_s)
    assert s_never["ttft_p99_s"] == float(np.percentile(ttft, 99))


def test_a_fixed_unanswered_figure_is_kept_where_given():
    arrival_s = np.array([0.0, 1.0])
    first_s = np.array([0.5, np.nan])
    s = summarize("p", ["m"], arrival_s, first_s, first_s + 1.0, np.zeros(2, np.int32), np.full(2, 10),
                  np.full(2, 1.0), duration_s=10.0, end_s=20.0, gpu_seconds=0.0, starts=STARTS, evictions=0,
                  unanswered_ttft_s=999.0, n_gpus=1).summary
    assert s["ttft_mean_s"] == (0.5 + 999.0) / 2
