import numpy as np
import pytest

from warmserve.policy.concurrency import WindowMeter, concurrency_series, request_durations


def test_durations_from_latency_profile():
    assert request_durations([0, 10], 0.035, 0.015) == pytest.approx([0.035, 0.185])


def test_series_hand_computed():
    # window 10 s: A [0, 4), B [2, 12), C [12, 13); D [4, 6) begins when A ends
    arr = [0, 2, 12, 4]
    dur = [4, 10, 1, 2]
    avg, peak = concurrency_series(arr, dur, 10.0, n_windows=2)
    assert avg == pytest.approx([(4 + 8 + 2) / 10, (2 + 1) / 10])
    assert peak.tolist() == [2, 1]  # A and D never overlap; B is in flight when window 2 opens


def test_series_matches_brute_force():
    rng = np.random.default_rng(0)
    arr = np.sort(rng.uniform(0, 100, 300))
    dur = rng.exponential(3, 300)
    avg, peak = concurrency_series(arr, dur, 20.0, n_windows=6)
    grid = np.arange(0, 120, 0.001) + 0.0005
    level = ((arr[None, :] <= grid[:, None]) & (grid[:, None] < (arr + dur)[None, :])).sum(axis=1)
    for w in range(6):
        sel = (grid >= 20 * w) & (grid < 20 * (w + 1))
        assert avg[w] == pytest.approx(level[sel].mean(), rel=2e-3)
        assert peak[w] == level[sel].max()


def test_window_meter():
    m = WindowMeter(10.0, 0.0)
    assert m.set(2.0, 3) == []
    assert m.set(5.0, 1) == []
    closed = m.set(25.0, 0)
    assert closed[0] == (0.0, pytest.approx((3 * 3 + 1 * 5) / 10), 3)
    assert closed[1] == (10.0, pytest.approx(1.0), 1)


def test_series_without_a_window_count_covers_the_trace_to_its_last_end():
    # ends at 27 s: three 10 s windows (the third partly); an empty trace gives one idle window
    avg, peak = concurrency_series([0, 25], [1, 2], 10.0)
    assert avg == pytest.approx([0.1, 0.0, 0.2]) and peak.tolist() == [1, 0, 1]
    avg, peak = concurrency_series([], [], 10.0)
    assert avg.tolist() == [0.0] and peak.tolist() == [0.0]
    avg, _ = concurrency_series([0, 25], [1, 2], 10.0, n_windows=5)  # a count given is kept
    assert len(avg) == 5


def test_window_meter_advanced_mid_window_keeps_the_span_it_moved_over():
    # a tick advances the meter at 5 s with 3 in flight since 2 s: the window's average still counts 2..5 s
    m = WindowMeter(10.0, 0.0)
    m.set(2.0, 3)
    assert m.advance(5.0) == []
    assert m.set(12.0, 0) == [(0.0, pytest.approx(3 * 8 / 10), 3)]
