"""Driver and planning faults found in review (``policy.driver``, ``policy.planner``): a host that outgrows one
server entry, a NaN peak forecast, and kept weights a cold start of the same model dropped."""

import math

import numpy as np
import pytest

from warmserve.policy import make_policy
from warmserve.policy import actions as A
from warmserve.policy.driver import PolicyDriver
from warmserve.policy.instant import InstantExecutor, instant_driver
from warmserve.policy.planner import plan_model, replica_counts
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _m(name, gib=13, tp=1):
    return ModelInfo(name, gib * GiB, tp=tp, kv_bytes_per_token=512 << 10)


class _Recording(InstantExecutor):
    """The instant executor, also keeping what each start and failure was given."""

    def __init__(self):
        super().__init__()
        self.starts, self.failed = [], []

    def start_instance(self, inst, act, prewarm, now_s):
        self.starts.append((act, prewarm))
        super().start_instance(inst, act, prewarm, now_s)

    def fail(self, request, error, now_s):
        self.failed.append((request, error))
        super().fail(request, error, now_s)


def _driver(models, st, policy="warmserve"):
    ex = _Recording()
    return ex.attach(PolicyDriver(make_policy(policy, models=models), st, ex)), ex


def test_a_ninth_gpu_on_a_host_opens_a_second_server_entry_that_serves():
    big, m = _m("big", 138, tp=8), _m("m")
    st = ClusterState.uniform(1, [big, m])
    d, ex = _driver([big, m], st)
    d.submit("big", "r0", 10.0)
    assert [i.gpus for i in st.instances.values()] == [tuple(range(8))]
    (g,) = d.add_gpus(0, [72 * GiB])
    assert len(st.servers[0].gpu_ids) == 8 and st.gpus[g].server_id != 0
    d.route_all(11.0)
    d.tick(11.0)
    d.submit("m", "r1", 11.2)  # the only idle GPU is the new one
    (act, _), = [s for s in ex.starts if s[0].model == "m"]
    assert act.gpus == (g,)
    (g2,) = d.add_gpus(0, [72 * GiB])  # the host's second entry takes the next one
    assert st.gpus[g2].server_id == st.gpus[g].server_id
    d.tick(12.0)


def test_a_nan_peak_forecast_plans_on_the_average():
    assert replica_counts(40.0, math.nan, 0, 32) == (2, 0)
    assert [c.score for c in plan_model("m", 40.0, math.nan, 0, 32, 1.0)] == [1.0, math.exp(-0.5)]
    m = _m("m")
    t = np.arange(2 * 288) * 300.0
    pol = make_policy("warmserve", models=[m], history={"m": (t, np.full(len(t), 40.0), np.full(len(t), np.nan))})
    assert pol.forecast("m", 2 * 288) == (40.0, 40.0)
    d = instant_driver(pol, ClusterState.uniform(1, [m]))
    d.tick(2 * 86400.0)
    assert len(d.state.prewarms) == 2


@pytest.mark.parametrize("policy,hit", [("warmserve", True), ("autoscale", False), ("engine-prewarm-only", False)])
def test_a_cold_start_on_its_own_kept_weights_is_a_hit_where_the_policy_prewarms_weights(policy, hit):
    """A vanilla autoscaler's stopped engine takes its weights with it: its start there stays cold."""
    m = _m("m")
    st = ClusterState.uniform(1, [m], gpus_per_server=1)
    d, ex = _driver([m], st, policy)
    d.submit("m", "r0", 10.0)
    (iid,) = st.instances
    d.tick(10.5)
    d.apply(A.StopInstance(iid), 11.0)
    d.request_finished("m", iid, 11.2, request="r0")
    assert list(d.kept) == [iid]
    n = len(ex.log)
    d.submit("m", "r1", 11.4)  # route() starts m before the next tick, on the GPU its weights stayed on
    act, pw = ex.starts[-1]
    assert act.gpus == (0,) and not d.kept
    if hit:
        assert not [x for x in ex.log[n:] if x[0] == "drop_kept"]
        assert pw is not None and pw.loaded and act.prewarm_id == pw.prewarm_id
    else:
        assert pw is None and act.prewarm_id is None and [x for x in ex.log[n:] if x[0] == "drop_kept"]
