"""A total rate whose workload would hold more requests than memory does is refused before any is drawn. Found in
review: `warmserve bench replay --rate 1e5 --duration-s 3600 --history-days 0` drew ServeGen arrivals until memory
ran out (MemoryError under a 3 GB limit, ~4e8 requests), and the recipes called with such a rate did the same."""

import argparse

import pytest

from warmserve.bench import replay as R
from warmserve.errors import InvalidArgumentError
from warmserve.workload import recipe_args
from warmserve.workload.recipes import paper_workload, servegen_workload


def test_bench_replay_at_1e5_rps_for_an_hour_is_refused_before_drawing():
    p = argparse.ArgumentParser()
    R.add_arguments(p)
    args = p.parse_args(["--models", "6", "--rate", "1e5", "--duration-s", "3600", "--history-days", "0"])
    with pytest.raises(InvalidArgumentError) as e:
        R.build_workload(args)
    assert e.value.expected_requests > recipe_args.MAX_WORKLOAD_REQUESTS
    assert 1e3 < e.value.max_rate_rps < 1e4  # 1e5 x 2e7 / ~4e8 requests
    assert "--duration-s" in str(e.value) and "bench replay --rate" in str(e.value)


@pytest.mark.parametrize("recipe", ["servegen", "paper"])
def test_a_workload_past_the_budget_is_refused_with_the_rate_that_fits(monkeypatch, recipe):
    monkeypatch.setattr(recipe_args, "MAX_WORKLOAD_REQUESTS", 5000)
    build = (lambda: servegen_workload(4, total_rate_rps=10.0, duration_s=600, history_days=0)) \
        if recipe == "servegen" else (lambda: paper_workload("code", 4, total_rate_rps=10.0, history_days=0))
    with pytest.raises(InvalidArgumentError) as e:
        build()  # about 12,000 (servegen) and 18,000 (paper) requests over warm-up and replay
    assert e.value.expected_requests == pytest.approx(12000 if recipe == "servegen" else 18000, rel=0.05)
    assert e.value.max_rate_rps == pytest.approx(10.0 * 5000 / e.value.expected_requests)


def test_a_workload_within_the_budget_is_drawn_as_before(monkeypatch):
    monkeypatch.setattr(recipe_args, "MAX_WORKLOAD_REQUESTS", 20000)
    w = servegen_workload(4, total_rate_rps=10.0, duration_s=600, history_days=0)
    assert len(w.trace) == pytest.approx(6000, rel=0.02)
