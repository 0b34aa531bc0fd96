"""Every outcome of warmserve_requests_total is exported at 0 for each served model before its first request, so
that increase()/rate() see the first one: found in a fault run, where the first request a worker loss failed made
warmserve_requests_total{outcome="worker_lost"} appear at 1, invisible to an alert on its increase. A real controller
(not started: its metrics and their scrape-time views are built with it)."""

from prometheus_client.parser import text_string_to_metric_families

from warmserve.controller.controller import Controller
from warmserve.controller.errors import NoWorkersError
from warmserve.controller.executor import outcome_of
from warmserve.controller.metrics import OUTCOMES
from warmserve.controller.requests import Req
from warmserve.errors import TimeoutError_, WarmServeError
from warmserve.protocol import SamplingParams

from controller_harness import make_controller


def _scrape(ctl: Controller) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(ctl.metrics.registry.render()) for s in f.samples}


def test_every_outcome_is_at_zero_before_the_first_request(model):
    got = _scrape(make_controller(model))
    for outcome in OUTCOMES:
        assert got[("warmserve_requests_total", (("model", model.name), ("outcome", outcome)))] == 0
    for outcome in ("stop", "length"):
        assert got[("warmserve_request_seconds_count", (("model", model.name), ("outcome", outcome)))] == 0


def test_the_first_lost_request_moves_its_series_from_zero(model):
    """What increase() computes across two scrapes: 0, then 1 (before: absent, then 1, an increase of nothing)."""
    ctl = make_controller(model)
    key = ("warmserve_requests_total", (("model", model.name), ("outcome", "worker_lost")))
    before = _scrape(ctl).get(key)
    req = Req(1, model.name, [1, 2, 3], SamplingParams(max_tokens=4), timeout_s=30.0)
    ctl.metrics.request_done(req, "worker_lost", now_s=1.0)
    assert (before, _scrape(ctl)[key]) == (0, 1)


def test_outcomes_list_every_outcome_the_controller_counts():
    """OUTCOMES is the closed set docs/metrics.md lists; an outcome outside it would appear at 1 again."""
    for error in (TimeoutError_("t"), NoWorkersError("n"), WarmServeError("e")):
        assert outcome_of(error) in OUTCOMES
