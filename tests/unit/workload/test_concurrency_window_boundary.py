"""concurrency_windows at a window boundary (found in review): a request in flight over [0, 100) that departs at
exactly 100 showed as peak 1 in the window [100, 200), where nothing is in flight (its average there was 0)."""

import numpy as np
import pytest

from warmserve.workload.concurrency import concurrency_windows


def test_a_request_ending_on_a_boundary_is_not_in_the_next_windows_peak():
    _, avg, peak = concurrency_windows(np.array([0.0]), np.array([100.0]), 0.0, 300.0, 100.0)
    assert peak.tolist() == [1.0, 0.0, 0.0]
    assert avg == pytest.approx([1.0, 0.0, 0.0])


def test_a_departure_and_an_arrival_on_a_boundary_count_once_in_the_next_window():
    # one leaves at 100, another arrives at 100: one in flight in each window, never two at once after 100
    _, avg, peak = concurrency_windows(np.array([0.0, 100.0]), np.array([100.0, 150.0]), 0.0, 300.0, 100.0)
    assert peak.tolist() == [1.0, 1.0, 0.0]
    assert avg == pytest.approx([1.0, 0.5, 0.0])


def test_inside_a_window_an_arrival_at_a_departures_time_still_counts_both():
    # unchanged: at equal times inside a window, arrivals before departures (a peak counts both)
    _, avg, peak = concurrency_windows(np.array([0.0, 50.0]), np.array([50.0, 80.0]), 0.0, 300.0, 100.0)
    assert peak.tolist() == [2.0, 0.0, 0.0]
    assert avg == pytest.approx([0.8, 0.0, 0.0])
    # a request arriving on a boundary is in the window it starts
    _, avg, peak = concurrency_windows(np.array([100.0]), np.array([250.0]), 0.0, 300.0, 100.0)
    assert peak.tolist() == [0.0, 1.0, 1.0] and avg == pytest.approx([0.0, 1.0, 0.5])


def test_a_zero_length_request_on_a_boundary_counts_as_inside_a_window():
    # as a zero-length request at 10 s counts in its window's peak, one at 100 s counts in [100, 200)
    _, _, inside = concurrency_windows(np.array([10.0]), np.array([10.0]), 0.0, 300.0, 100.0)
    _, avg, peak = concurrency_windows(np.array([100.0]), np.array([100.0]), 0.0, 300.0, 100.0)
    assert inside.tolist() == [1.0, 0.0, 0.0] and peak.tolist() == [0.0, 1.0, 0.0] and avg.tolist() == [0, 0, 0]


def test_several_requests_ending_on_a_boundary_leave_the_next_window_alone():
    """Found in review of the first fix: the level between two departures on the boundary was counted there."""
    from warmserve.workload.concurrency import concurrency_windows

    for n in (2, 3):
        _, avg, peak = concurrency_windows(np.zeros(n), np.full(n, 100.0), 0.0, 300.0, 100.0)
        assert avg.tolist() == [float(n), 0.0, 0.0] and peak.tolist() == [float(n), 0.0, 0.0]
    # one leaves on the boundary as another arrives there: the new window holds the one that came
    _, avg, peak = concurrency_windows(np.array([0.0, 0.0, 100.0]), np.array([100.0, 100.0, 150.0]), 0.0, 300.0,
                                       100.0)
    assert peak.tolist() == [2.0, 1.0, 0.0] and avg.tolist() == [2.0, 0.5, 0.0]
