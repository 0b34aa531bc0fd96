"""A cost profile whose decode step is 0 s is refused by name under the "fluid" engine model (its steps per second
would be infinite), and still runs under the vLLM-like model, whose step adds the weight read. Found in review:
``profile_check`` passes times >= 0, and the fluid run ended in a ZeroDivisionError (``_steps_in``)."""

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, ModelCost
from warmserve.sim.engine_model import check_fluid_steps
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

MODEL = "llama2-7b"


def _sim(engine_model, decode):
    """Two requests on one GPU, the profile's decode part for ``MODEL`` as given (``decode_step_s`` or
    ``decode_table`` keys)."""
    tr = Trace([MODEL], np.asarray([0.0, 0.5]), np.zeros(2, np.int32), np.asarray([100, 200]), np.asarray([20, 30]))
    w = Workload("hand", tr, Trace.empty([MODEL]), 2.0)
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=600.0, warmup_s=0.0, shared_search=False,
                       engine_model=engine_model)
    cost = CostModel.from_profile({"schema": "warmserve.sim.profile/1", "models": {MODEL: decode}})
    return Simulator(w, [ServedModel(MODEL, MODEL)], "dedicated", config=config, cost=cost)


def test_fluid_refuses_a_zero_decode_step_naming_the_model_and_the_fix():
    with pytest.raises(InvalidArgumentError, match=r"'llama2-7b'.*decode step of 0 s at a batch of 1.*base_s > 0"):
        _sim("fluid", {"decode_step_s": {"base_s": 0.0, "per_seq_s": 0.0}})


def test_fluid_refuses_a_step_that_is_zero_only_at_a_larger_batch():
    # a decode table falling to 0 s at batch 8 (tables may fall between points; never below their last point)
    with pytest.raises(InvalidArgumentError, match=r"at a batch of 8\b"):
        _sim("fluid", {"decode_table": [[1, 0.014], [8, 0.0], [64, 0.02]]})


def test_vllm_model_runs_a_zero_decode_step_on_the_weight_read():
    sim = _sim("vllm", {"decode_step_s": {"base_s": 0.0, "per_seq_s": 0.0}})
    s = sim.run().summary
    assert s["completed"] == 2 and s["refused"] == 0
    assert sim.finish[0] > sim.first[0]  # 19 decode steps each read the weights: more than no time


def test_fluid_checks_the_batches_it_can_run_and_no_larger():
    """The check covers batches 1 to the engine's ``max_batch``: a table reaching 0 s only at batch 9 is refused for
    an engine of 9 sequences and runs for one of 8, whose steps never read it there."""
    cost = CostModel()
    c = ModelCost(1e8, 1, 8192, 0.0, 0.0, 0.0, decode_table=((1, 0.01), (9, 0.0), (16, 0.02)))
    check_fluid_steps(cost, {"m": c}, 8)
    with pytest.raises(InvalidArgumentError, match=r"at a batch of 9\b"):
        check_fluid_steps(cost, {"m": c}, 9)
