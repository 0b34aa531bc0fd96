"""sim/inputs.py: what the simulator derives from a workload before it runs (each model's context, the clock
check). The KV floors these contexts feed are in test_engine_refuses_oversized.py and test_baselines.py."""

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.inputs import longest_requests, warmup_trace
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

MODEL = "llama2-7b"


def test_longest_requests_are_per_model_by_name_with_the_warm_up_and_not_the_older_history():
    """Trace model indices name the workload's models (not the served order); the warm-up span counts, history
    older than it does not; a model with no request in either gets 0 (unknown: its floor is the planning
    context)."""
    names = ["b", "a", "idle"]
    tr = Trace(names, np.array([0.0, 1.0, 2.0]), np.array([0, 1, 1], np.int32), np.array([100, 300, 50]),
               np.array([10, 20, 5]))
    hist = Trace(names, np.array([-500.0, -30.0]), np.array([1, 0], np.int32), np.array([5000, 900]),
                 np.array([100, 100]))
    w = Workload("hand", tr, hist, 3.0, clock0_s=1000.0)
    assert longest_requests(w, warmup_trace(w, 60.0)) == {"b": 1000, "a": 320, "idle": 0}
    assert longest_requests(w, warmup_trace(w, 600.0)) == {"b": 1000, "a": 5100, "idle": 0}
    assert longest_requests(w, warmup_trace(w, 0.0)) == {"b": 110, "a": 320, "idle": 0}


def test_a_warm_up_before_the_policys_time_zero_is_refused_with_the_fix():
    """The policy's load windows are counted from 0: a warm-up (or history) reaching before it crashed the load
    meter with an IndexError at its first window. Refused up front, naming the clock0_s that fixes it."""
    tr = Trace([MODEL], np.array([0.0]), np.zeros(1, np.int32), np.array([100]), np.array([10]))
    warm = Trace([MODEL], np.array([-30.0]), np.zeros(1, np.int32), np.array([100]), np.array([10]))
    config = SimConfig(n_servers=1, gpus_per_server=1, warmup_s=60.0, shared_search=False)
    with pytest.raises(InvalidArgumentError, match="clock0_s to at least 60"):
        Simulator(Workload("hand", tr, warm, 1.0), [ServedModel(MODEL, MODEL)], "warmserve", config=config)
    sim = Simulator(Workload("hand", tr, warm, 1.0, clock0_s=60.0), [ServedModel(MODEL, MODEL)], "warmserve",
                    config=config)
    s = sim.run().summary
    assert s["completed"] == 1 and s["warmup"]["requests"] == 1


def test_a_served_models_configured_context_is_what_the_policy_knows_and_the_runs_longest_request_otherwise():
    """The live replay's twin passes each model's checkpoint context (as the live controller does); without one the
    policy gets the run's longest request to the model. A context that is not a whole number >= 0 is refused."""
    tr = Trace(["a", "b"], np.array([0.0, 1.0]), np.array([0, 1], np.int32), np.array([300, 40]), np.array([20, 10]))
    w = Workload("hand", tr, Trace.empty(["a", "b"]), 2.0)
    served = [ServedModel("a", MODEL, context_tokens=4096), ServedModel("b", MODEL)]
    sim = Simulator(w, served, "warmserve", config=SimConfig(n_servers=1, gpus_per_server=2, shared_search=False))
    assert {i.name: i.max_context_tokens for i in sim.infos} == {"a": 4096, "b": 50}
    for bad in (-1, 2.5):
        with pytest.raises(InvalidArgumentError, match="context_tokens must be a whole number"):
            ServedModel("a", MODEL, context_tokens=bad)


def test_a_workload_whose_day_is_not_86400_s_is_refused():
    """Found in review: the policy's daily season is 86400 s, so a workload built with day_s 7200 put its history
    days where the forecasts never looked, and its windows went without a forecast."""
    from warmserve.workload.recipes import paper_workload

    w = paper_workload("conv", 2, duration_s=600.0, pre_s=300.0, history_days=2, day_s=7200.0, seed=0)
    with pytest.raises(InvalidArgumentError, match="day of 7200 s"):
        Simulator(w, [ServedModel(n, "llama2-7b") for n in w.models], "warmserve",
                  config=SimConfig(n_servers=1, gpus_per_server=2, shared_search=False))
