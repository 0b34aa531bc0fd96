"""concurrency_windows over a span that ends inside a window (found in review): the last window's in-flight load
was summed up to a breakpoint past t1_s and divided by the whole window, so it was neither the average over its
part before t1_s nor over the full window."""

import numpy as np
import pytest

from warmserve.workload.concurrency import concurrency_windows


def test_a_last_window_cut_short_averages_over_its_part():
    # one request in flight all along, a second from 500 s (after t1_s = 450 s): 1 in flight throughout
    starts, avg, peak = concurrency_windows(np.array([0.0, 500.0]), np.array([1000.0, 1000.0]), 0.0, 450.0, 300.0)
    assert starts.tolist() == [0.0, 300.0]
    assert avg == pytest.approx([1.0, 1.0]) and peak.tolist() == [1.0, 1.0]
    # half of the 150 s part busy
    _, avg, _ = concurrency_windows(np.array([300.0]), np.array([375.0]), 0.0, 450.0, 300.0)
    assert avg == pytest.approx([0.0, 0.5])
