"""The simulator's inputs from a workload's history: the warm-up it replays (``warmup_trace``) and the policy's
forecast windows (``history_windows``), each request in flight for its uncontended latency, by hand."""

import numpy as np
import pytest

from warmserve.sim.config import ServedModel
from warmserve.sim.costmodel import CostModel, ModelCost
from warmserve.sim.inputs import history_windows, warmup_trace
from warmserve.workload.request import Trace, Workload

#: prefill 10 ms whatever the prompt; a decode step of 20 ms + 1 ms per running sequence (36 ms at 16)
MC = ModelCost(weight_bytes=1 << 30, tp=1, kv_bytes_per_token=1024, prefill_base_s=0.01, prefill_per_token_s=0.0,
               decode_base_s=0.02, decode_per_seq_s=0.001)
COST = CostModel(models={"m": MC})
#: 10 ms prefill + 10 further tokens of 36 ms steps
LAT_S = 0.01 + 10 * 0.036
CLOCK0 = 1000.5


def _workload(spans):
    # history at -150, -60 (before the 0.5 s warm-up) and -0.3 s (inside it): on the clock 850.5, 940.5, 1000.2
    hist = Trace(["m"], np.array([-150.0, -60.0, -0.3]), np.zeros(3, np.int32), np.full(3, 100), np.full(3, 11))
    return Workload("h", Trace.empty(["m"]), hist, 10.0, clock0_s=CLOCK0, history_spans=spans)


def test_the_warm_up_replays_the_history_inside_it():
    """A 0.5 s warm-up replays the request 0.3 s before the start; 0.2 s or none replays nothing."""
    w = _workload([])
    warm = warmup_trace(w, 0.5)
    assert len(warm) == 1 and warm.arrival_s[0] == -0.3 and warm.models == ["m"]
    assert len(warmup_trace(w, 0.2)) == 0 and len(warmup_trace(w, 0.0)) == 0


def test_history_windows_count_each_request_for_its_uncontended_latency():
    """100 s windows from 800 to the warm-up's start (1000): each window holds one request in flight for
    LAT_S (prefill + output - 1 decode steps at a batch of 16), an average of LAT_S / 100 and a peak of 1; the
    warm-up's request is not history."""
    starts, avg, peak = history_windows(_workload([]), [ServedModel("m")], COST, 0.5, 100.0)["m"]
    np.testing.assert_allclose(starts, [800.0, 900.0])
    np.testing.assert_allclose(avg, [LAT_S / 100.0] * 2)
    np.testing.assert_allclose(peak, [1.0, 1.0])


def test_history_windows_keep_only_windows_the_spans_cover_whole():
    """With spans [-200.5, -100.5) and [-50.5, 0): the window at 800 lies inside the first, the one at 900 in
    neither (its second half only), so it is missing, not zero."""
    w = _workload([(-200.5, -100.5), (-50.5, 0.0)])
    starts, avg, peak = history_windows(w, [ServedModel("m")], COST, 0.5, 100.0)["m"]
    assert list(starts) == [800.0] and list(peak) == [1.0]
    assert avg[0] == pytest.approx(LAT_S / 100.0)
