"""Scale-in never stops a model's last serving instance while its own starts are still coming up."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def test_a_scale_out_for_a_backlog_keeps_the_serving_instance():
    """`autoscale` with ``scale_out_now`` (its scale-in floor is the averaged load): a burst of long prompts makes
    the tick start two instances for the backlog of now. Before the fix the same tick stopped the one instance
    that serves (its averaged load asks for one, and the two starting ones counted), and every tick after it
    stopped it again while route() revived it."""
    m = ModelInfo("a", 13 * GiB, 1, kv_bytes_per_token=512 << 10, prefill_s=0.035, decode_s_per_token=0.015)
    st = ClusterState.uniform(1, [m], gpus_per_server=4, gpu_bytes=72 * GiB)
    pol = make_policy("autoscale", models=[m], config=PolicyConfig(scale_out_now=True))
    d = instant_driver(pol, st, start_ready=False)
    d.submit("a", "r0", 0.0, prompt_tokens=100)
    (iid,) = st.instances
    d.instance_ready(iid, 1.0)
    d.request_finished("a", iid, 1.5, request="r0")
    for t in range(2, 30):
        d.tick(float(t))
    for k in range(4):  # 4 x 4096 prompt tokens: a prefill backlog well over one instance's budget
        d.submit("a", f"b{k}", 30.2, prompt_tokens=4096)
    stops = []
    for t in (31.0, 32.0, 33.0, 34.0):
        acts = pol.tick(st, t)
        for a in acts:
            d.apply(a, t)
        d.route_all(t)
        stops += [a.instance_id for a in acts if type(a) is A.StopInstance]
        d.submit("a", f"n{t}", t + 0.5, prompt_tokens=4096)
    assert any(not i.ready for i in st.instances.values())  # the starts are still coming up
    assert iid not in stops and not st.instances[iid].draining
