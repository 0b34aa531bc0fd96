"""--burst-cv / burst_cv out of range (found in review): with Gamma shape 1/cv^2 a large CV made every draw of a
segment underflow to 0, so 0/0 gave NaN arrival times, which the recipes then put in neither the replay nor the
history: at cv 1e4 the paper recipe replayed 0 requests and raised nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload import paper_workload, regamma, servegen_workload
from warmserve.workload.recipes import MAX_BURST_CV, _finish
from warmserve.workload.request import Trace


@pytest.mark.parametrize("cv", [1e4, math.inf, math.nan, 0.0, -1.0])
def test_regamma_refuses_a_cv_out_of_range_naming_it(cv):
    with pytest.raises(InvalidArgumentError, match="burst cv"):
        regamma(np.zeros(10), 0.0, 600.0, cv, np.random.default_rng(0))


@pytest.mark.parametrize("n", [1, 2, 10])
def test_regamma_up_to_the_bound_gives_finite_times_in_the_span(n):
    # at the bound nearly every Gamma draw underflows to 0: a segment of a few arrivals has all of them 0 often
    rng = np.random.default_rng(0)
    for _ in range(200):
        t = regamma(np.zeros(n), 10.0, 610.0, MAX_BURST_CV, rng)
        assert len(t) == n and np.isfinite(t).all() and (t >= 10.0).all() and (t < 610.0).all()
        assert (np.diff(t) >= 0).all()


def test_regamma_draws_are_unchanged_where_they_were_sound():
    # the same generator state gives the same times as the formula always did (committed results stay)
    rng = np.random.default_rng(3)
    t = regamma(np.zeros(50), 0.0, 100.0, 4.0, rng)
    rng = np.random.default_rng(3)
    iat = rng.gamma(1.0 / 16.0, 1.0, 51)
    want = np.minimum(np.cumsum(iat)[:50] / iat.sum() * 100.0, np.nextafter(100.0, 0.0))
    assert np.array_equal(t, want)


def test_the_recipes_refuse_a_cv_out_of_range_instead_of_dropping_requests():
    with pytest.raises(InvalidArgumentError, match="burst cv"):
        paper_workload("conv", 2, total_rate_rps=24, duration_s=300, seed=0, burst_cv=1e4)
    with pytest.raises(InvalidArgumentError, match="burst cv"):
        servegen_workload(2, duration_s=1200, history_days=0, total_rate_rps=20, burst_cv=1e3, seed=0)


def test_a_large_accepted_cv_keeps_every_request():
    plain = paper_workload("conv", 2, total_rate_rps=24, duration_s=300, seed=0, history_days=1)
    w = paper_workload("conv", 2, total_rate_rps=24, duration_s=300, seed=0, history_days=1, burst_cv=MAX_BURST_CV)
    # the re-draw keeps every segment's count; the counts themselves differ a little from the plain workload's,
    # as the re-draws use the generator and so move its later thinning draws
    assert len(w.trace) == pytest.approx(24 * 300, rel=0.03) and len(w.history) == pytest.approx(len(plain.history),
                                                                                                  rel=0.03)
    assert np.isfinite(w.trace.arrival_s).all() and np.isfinite(w.history.arrival_s).all()


def test_finish_refuses_non_finite_arrival_times():
    parts = [Trace(["m"], np.array([1.0, 1.5, 2.0]), np.zeros(3, np.int32), np.ones(3), np.ones(3))]
    parts[0].arrival_s[1] = math.nan  # past Trace's own check, which refuses it at construction
    with pytest.raises(InvalidArgumentError, match="not finite"):
        _finish("x", ["m"], parts, 10.0, 0.0, 86400.0, 1.0, 0.0, {"total_rate_rps": 1.0}, [(0.0, 10.0)])


@pytest.mark.parametrize("ts", [math.inf, math.nan, 0.0])
def test_finish_refuses_a_time_scale_that_is_not_finite_and_positive(ts):
    parts = [Trace(["m"], np.array([1.0, 2.0]), np.zeros(2, np.int32), np.ones(2), np.ones(2))]
    with pytest.raises(InvalidArgumentError, match="time_scale"):
        _finish("x", ["m"], parts, 10.0, 0.0, 86400.0, ts, 0.0, {"total_rate_rps": 1.0}, [(0.0, 10.0)])
