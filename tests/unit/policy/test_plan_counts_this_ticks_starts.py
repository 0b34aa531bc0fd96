"""The prewarm plan counts the instances its own tick starts (found in review: a replica that a scale-out of the
same tick had just turned into an instance was prewarmed again; the paper presets' runs are the same either way)."""

import numpy as np

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

DAY_S = 86400.0


def test_a_replica_a_ticks_scale_out_took_is_not_planned_again():
    m = ModelInfo("m", 13_500_000_000, 1, 524_288)
    t = np.arange(2 * 288) * 300.0  # two days of 5-minute windows at 40 in flight: two instances at B = 32
    pol = make_policy("warmserve", models=[m], config=PolicyConfig(replan_s=1.0),
                      history={"m": (t, np.full(len(t), 40.0), np.full(len(t), 40.0))})
    st = ClusterState.uniform(1, [m], gpus_per_server=4)
    d = instant_driver(pol, st)
    d.tick(2 * DAY_S)
    assert len(st.prewarms) == 2
    for k in range(30):  # one instance holds them; the 5 s average then asks the tick for a second
        d.submit("m", f"r{k}", 2 * DAY_S + 1)
    assert len(st.instances) == 1 and len(st.prewarms) == 1
    for s in range(2, 12):  # the plan runs every tick (replan_s 1 s), the scale-out's among them
        d.tick(2 * DAY_S + s)
    assert len(st.instances) == 2
    assert not st.prewarms, "the forecast's two instances run: no replica is wanted"
