"""A request a co-served instance refused for want of room (``NoRoomHereError``) goes on to an instance of its model
that serves alone (``PolicyDriver.reroute``): before, the client got the error although such an instance could
serve it."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _setup():
    """a co-served with b on GPU 0 (i-a0, i-b0), and a alone on GPU 1 (i-a1); GPU 2 idle."""
    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19), ModelInfo("b", 10 * GiB, 1, 1 << 19)]
    st = ClusterState.uniform(1, models, gpus_per_server=3, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6))
    d = instant_driver(pol, st)
    d.apply(A.StartInstance("i-a0", "a", (0,), kv_fraction=0.5), 0.0)
    d.apply(A.StartInstance("i-b0", "b", (0,), kv_fraction=0.5), 0.0)
    d.apply(A.StartInstance("i-a1", "a", (1,)), 0.0)
    return d, st


def test_a_request_refused_by_a_co_served_instance_goes_to_the_one_serving_alone():
    d, st = _setup()
    d.submit("a", "r1", 1.0, prompt_tokens=3000)
    assert d.executor.running == {"i-a0": ["r1"]}  # the tie goes to the lower id: the co-served one
    assert st.instances["i-a0"].prefill_tokens_pending == 3000
    assert d.reroute("a", "r1", "i-a0", 1.1) is True
    a0, a1 = st.instances["i-a0"], st.instances["i-a1"]
    assert d.executor.running["i-a1"] == ["r1"]
    assert (a0.in_flight, a1.in_flight) == (0, 1)
    assert (a0.prefill_tokens_pending, a1.prefill_tokens_pending) == (0, 3000) and st.queued_prompt_tokens["a"] == 0
    assert not st.queues["a"]
    d.prefill_done("r1", 1.2)
    d.request_finished("a", "i-a1", 1.5, request="r1")
    assert a1.in_flight == 0 and a1.prefill_tokens_pending == 0


def test_a_draining_refuser_stops_once_the_request_has_moved_on():
    d, st = _setup()
    d.submit("a", "r1", 1.0)
    d.apply(A.StopInstance("i-a0"), 1.0)
    assert st.instances["i-a0"].draining
    assert d.reroute("a", "r1", "i-a0", 1.1) is True
    assert "i-a0" not in st.instances and st.instances["i-a1"].in_flight == 1


def test_no_move_without_an_instance_serving_alone_nor_from_one():
    d, st = _setup()
    d.submit("a", "r1", 1.0)
    d.apply(A.StopInstance("i-a1"), 1.0)  # draining: it takes nothing new
    before = (st.instances["i-a0"].in_flight, dict(d.executor.running))
    assert d.reroute("a", "r1", "i-a0", 1.1) is False
    assert (st.instances["i-a0"].in_flight, d.executor.running) == before and not st.queues["a"]
    # an instance alone that refused has no better peer: the caller fails the request
    d2, st2 = _setup()
    d2.submit("a", "r2", 1.0)
    d2.submit("a", "r3", 1.0)
    assert d2.executor.running["i-a1"] == ["r3"]
    assert d2.reroute("a", "r3", "i-a1", 1.1) is False
    assert st2.instances["i-a1"].in_flight == 1
    assert d2.reroute("a", "r3", "i-gone", 1.1) is False


def test_reroute_orders_the_instances_alone_as_route_does():
    """With ``route_least_prefill`` the refused request goes to the instance alone with the fewest prompt tokens
    waiting for prefill, though it has more requests in flight (route()'s order; found in review: reroute kept the
    fewest-in-flight order)."""
    for by_prefill, expected in ((False, "i-a2"), (True, "i-a1")):
        models = [ModelInfo("a", 10 * GiB, 1, 1 << 19), ModelInfo("b", 10 * GiB, 1, 1 << 19)]
        st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=40 * GiB)
        cfg = PolicyConfig(replan_s=1e9, window_s=1e6, route_least_prefill=by_prefill)
        d = instant_driver(make_policy("warmserve", models=models, config=cfg), st)
        d.apply(A.StartInstance("i-a0", "a", (0,), kv_fraction=0.5), 0.0)
        d.apply(A.StartInstance("i-b0", "b", (0,), kv_fraction=0.5), 0.0)
        d.apply(A.StartInstance("i-a1", "a", (1,)), 0.0)
        d.apply(A.StartInstance("i-a2", "a", (2,)), 0.0)
        a1, a2 = st.instances["i-a1"], st.instances["i-a2"]
        a1.in_flight, a1.prefill_tokens_pending = 2, 0  # two decoding
        a2.in_flight, a2.prefill_tokens_pending = 1, 8000  # one long prompt still in prefill
        st.instances["i-a0"].in_flight = 0
        d.submit("a", "r1", 1.0, prompt_tokens=100)
        assert d.executor.running.get("i-a0") == ["r1"], d.executor.running
        assert d.reroute("a", "r1", "i-a0", 1.1) is True
        assert d.executor.running[expected] == ["r1"], (by_prefill, d.executor.running)
