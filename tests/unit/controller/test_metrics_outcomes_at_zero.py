"""Every outcome of warmserve_requests_total, and every reason of warmserve_resumed_requests_total, is exported at 0
for each served model before its first request, and each path of warmserve_tp_groups_built_total from the start, so
that increase()/rate() see the first one: found in a fault run, where the first request a worker loss failed made
warmserve_requests_total{outcome="worker_lost"} appear at 1, invisible to an alert on its increase. A real controller
(not started: its metrics and their scrape-time views are built with it)."""

import ast
import glob
import os

from prometheus_client.parser import text_string_to_metric_families

from warmserve import controller as controller_pkg

from warmserve.controller.controller import Controller
from warmserve.controller.errors import NoWorkersError
from warmserve.controller.executor import outcome_of
from warmserve.controller.metrics import OUTCOMES, RESUME_REASONS, TP_GROUP_PATHS
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


def test_every_resume_reason_and_tp_group_path_is_at_zero_before_its_first_event(model):
    """Found in review: warmserve_resumed_requests_total and warmserve_tp_groups_built_total first appeared at 1 (an
    alert on the increase of resumptions after worker losses missed the first one)."""
    got = _scrape(make_controller(model))
    for why in RESUME_REASONS:
        assert got[("warmserve_resumed_requests_total", (("model", model.name), ("why", why)))] == 0, why
    for path in TP_GROUP_PATHS:
        assert got[("warmserve_tp_groups_built_total", (("path", path),))] == 0, path


def _strings(node) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_the_reasons_and_paths_at_zero_are_every_one_the_controller_counts():
    """Read from the controller's source: each string a ``resumed.inc`` passes as ``why`` (a literal, or the
    literals of what its name was assigned in that function), and each path ``_build`` is given: a new one outside
    RESUME_REASONS or TP_GROUP_PATHS would appear at 1 again."""
    whys, paths = set(), set()
    for path in glob.glob(os.path.join(os.path.dirname(controller_pkg.__file__), "*.py")):
        tree = ast.parse(open(path).read())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            assigned: dict[str, set[str]] = {}
            for n in ast.walk(fn):
                if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                    assigned.setdefault(n.targets[0].id, set()).update(_strings(n.value))
            for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)):
                f = call.func
                if f.attr == "inc" and isinstance(f.value, ast.Attribute) and f.value.attr == "resumed":
                    (why,) = [k.value for k in call.keywords if k.arg == "why"]
                    whys |= assigned.get(why.id, set()) if isinstance(why, ast.Name) else _strings(why)
                elif f.attr == "_build" and len(call.args) == 2:
                    paths |= _strings(call.args[1])
    assert whys == set(RESUME_REASONS) and paths == set(TP_GROUP_PATHS), (whys, paths)
