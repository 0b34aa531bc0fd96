"""Guards in ``core.Policy`` that mutation testing found unpinned: the decode-step feed takes no negative batch,
a scale-in stops serving instances down to one while a start is under way (not none), and route() opens no new
co-serving host for a request while another model waits with no instance. All through the real driver."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _7b(name, tp=1, step_s=0.015):
    """A 7B-sized model: 13.5 GB, 0.5 MiB of KV per token, 35 ms prefill, ``step_s`` per decode step."""
    return ModelInfo(name, 13_500_000_000, tp, 524_288, 0.035, step_s)


def test_the_decode_step_feed_takes_a_zero_batch_and_ignores_a_negative_one():
    """A batch of 0 running sequences is a measurement (the step of an idle engine); a negative batch is not, and
    leaves nothing observed."""
    pol = make_policy("warmserve", models=[_7b("a")], config=PolicyConfig())
    pol.observe_decode_step("a", 0.1, -0.5, 0.0)
    assert pol._co.observed == {}
    pol.observe_decode_step("a", 0.1, 0.0, 1.0)
    assert [(o.step_s, o.batch, o.at_s) for o in pol._co.observed.values()] == [(0.1, 0.0, 1.0)]


def test_a_scale_in_during_a_start_stops_serving_instances_down_to_the_last_one():
    """Three ready instances of an idle model and a fourth still starting: the scale-in (target 1, the last
    instance kept) stops the two quietest ready ones (ties: by id) and keeps the third serving until the start is
    ready; the guard for a start under way holds only the last serving instance, not all of them."""
    m = _7b("a")
    st = ClusterState.uniform(1, [m], gpus_per_server=8, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=[m], config=PolicyConfig(replan_s=1e9, window_s=1e6))
    d = instant_driver(pol, st, start_ready=False)
    for k, iid in enumerate(("a/x1", "a/x2", "a/x3", "a/x4")):
        d.apply(A.StartInstance(iid, "a", (k,)), 0.0)
    for iid in ("a/x1", "a/x2", "a/x3"):
        d.instance_ready(iid, 0.0)
    acts = pol.tick(st, 100.0)
    assert [a.instance_id for a in acts if type(a) is A.StopInstance] == ["a/x1", "a/x2"]


def test_a_request_opens_no_new_host_while_another_model_waits_with_no_instance():
    """`a` runs co-served on GPU 1 beside a dedicated `e` on GPU 0; `c` (tp 2) queued while server 1 was busy, and
    server 1 is idle again. A request of `b`, whose round with `a` (15 + 20 ms) passes the join target (50 ms x
    0.5 / 0.8), may join an existing host only: opening one on server 1 would take the GPUs `c` waits for, so it
    queues and nothing starts."""
    models = [_7b("a"), _7b("b", step_s=0.02), _7b("c", tp=2), _7b("e"), _7b("f")]
    st = ClusterState.uniform(2, models, gpus_per_server=2, gpu_bytes=72 * GiB)
    cfg = PolicyConfig(replan_s=1e9, window_s=1e6, coserve_always=True, coserve_tpot_s=0.05)
    pol = make_policy("warmserve", models=models, config=cfg)
    d = instant_driver(pol, st)
    d.apply(A.StartInstance("e/x1", "e", (0,)), 0.0)
    d.apply(A.StartInstance("f/x1", "f", (2,)), 0.0)
    d.submit("a", "a0", 0.0)
    d.submit("c", "c0", 0.2)
    d.apply(A.StopInstance("f/x1"), 0.25)
    assert {i.instance_id: i.gpus for i in st.instances.values()} == {"e/x1": (0,), "a/i1": (1,)}
    assert "a/i1" in pol._co.ids and st.queued("c") == 1
    assert pol.route(st, "b", 0.3) is None
    d.submit("b", "b0", 0.3)
    assert sorted(st.instances) == ["a/i1", "e/x1"] and st.queued("b") == 1
