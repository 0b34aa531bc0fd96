"""How the simulator's result splits what happened between the warm-up and the measured span: refused requests
(too large for the instance's whole KV cache, as in ``test_engine_refuses_oversized``) count where they arrived."""

import math

import numpy as np

from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, GpuType
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

MODEL = "llama2-7b"
#: a 16 GB GPU holds the 13.5 GB shard and 6 KV blocks: 1024 + 1024 tokens (8 blocks) never fit
SMALL_GPU = GpuType(memory_bytes=16e9)


def _trace(arrivals, prompts, outputs):
    n = len(arrivals)
    return Trace([MODEL], np.asarray(arrivals, float), np.zeros(n, np.int32), np.asarray(prompts),
                 np.asarray(outputs))


def test_refusals_count_in_the_span_they_arrived_in():
    """Warm-up: an oversized request, then a small one; measured span: an oversized request first (the first
    measured request id), then a small one. One refusal in each span, both small requests answered."""
    history = _trace([-5.0, -4.0], [1024, 100], [1024, 10])
    trace = _trace([0.0, 0.5], [1024, 100], [1024, 10])
    w = Workload("hand", trace, history, 1.5, warmup_s=10.0, clock0_s=10.0)
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=600.0, shared_search=False)
    sim = Simulator(w, [ServedModel(MODEL)], "dedicated", config=config, cost=CostModel(gpu=SMALL_GPU))
    s = sim.run().summary
    assert sim.n_warm == 2 and sorted(sim.refused) == [0, 2]
    assert s["refused"] == 1 and s["warmup"]["refused"] == 1 and s["warmup"]["requests"] == 2
    assert s["requests"] == 2 and s["completed"] == 1 and s["unanswered"] == 1
    assert not math.isnan(sim.finish[1]) and not math.isnan(sim.finish[3])
