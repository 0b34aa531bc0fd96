"""Found in review: with ``scale_out_now`` under `autoscale`, the tick that started six instances of a model for a
burst of long prompts also stopped one of its two serving instances (the guard kept only a model's last ready
instance), and the next tick revived it. A tick that starts instances of a model stops none of it."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _two_serving(name: str):
    """One 7B model on one 8-GPU server, served by two ready instances that carried 20 requests until t=15 s and
    hold one each after; ticks every second up to t=16."""
    m = ModelInfo("a", 13_500_000_000, 1, 524_288, 0.035, 0.015)
    st = ClusterState.uniform(1, [m], gpus_per_server=8, gpu_bytes=72 * GiB)
    pol = make_policy(name, models=[m], config=PolicyConfig(scale_out_now=True))
    d = instant_driver(pol, st, start_ready=False)
    for iid, g in (("a/x1", 0), ("a/x2", 1)):
        d.apply(A.StartInstance(iid, "a", (g,)), 0.0)
        d.instance_ready(iid, 0.0)
    for k in range(20):
        d.submit("a", f"bg{k}", 0.0)
    ex = d.executor
    for t in range(17):
        if t == 15:  # the load drops to one request per instance
            for iid in list(ex.running):
                while len(ex.running[iid]) > 1:
                    d.request_finished("a", iid, 15.0, request=ex.running[iid].pop())
        d.tick(float(t))
    return st, pol, d


def test_a_tick_that_starts_instances_of_a_model_stops_none_of_it():
    st, pol, d = _two_serving("autoscale")
    for k in range(4):  # 4 x 60k-token prompts: a prefill backlog for several instances more
        d.submit("a", f"long{k}", 16.95, prompt_tokens=60_000)
    acts = pol.tick(st, 17.0)
    started = [a for a in acts if type(a) is A.StartInstance and a.model == "a"]
    stopped = [a.instance_id for a in acts if type(a) is A.StopInstance]
    assert started, acts  # the scale-out for the backlog of now still happens
    assert stopped == [], acts  # before: StopInstance('a/x1'), a serving instance holding requests
    for a in acts:
        d.apply(a, 17.0)
    assert not any(i.draining for i in st.instances.values())
    revived = []
    for t in (18.0, 19.0, 20.0):
        acts = pol.tick(st, t)
        revived += [a.instance_id for a in acts if type(a) is A.ReviveInstance]
        for a in acts:
            d.apply(a, t)
    assert revived == []  # before: the next tick revived the instance it had stopped
