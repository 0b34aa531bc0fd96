"""The driver's per-request bookkeeping with the instant executor, against hand-counted values: prompt tokens
leave an instance's prefill backlog request by request, and one model's start backoff holds only that model's
queue."""

from warmserve.errors import WarmServeError
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _setup(n_gpus=4):
    """Two tp-1 models of 10 GiB on one server of ``n_gpus`` 40 GiB GPUs; no plan after the first tick."""
    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19), ModelInfo("b", 10 * GiB, 1, 1 << 19)]
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6))
    return instant_driver(pol, st), st


def test_prefill_backlog_falls_by_each_finished_requests_prompt():
    """Two requests of 100 and 200 prompt tokens on one instance: 300 tokens pending; the first ending before its
    first token leaves 200, the second 0 (not a floor above it)."""
    d, st = _setup()
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    d.submit("a", "r1", 1.0, prompt_tokens=100)
    d.submit("a", "r2", 1.0, prompt_tokens=200)
    inst = st.instances["i1"]
    assert (inst.in_flight, inst.prefill_tokens_pending) == (2, 300)
    d.request_finished("a", "i1", 2.0, request="r1")
    assert (inst.in_flight, inst.prefill_tokens_pending) == (1, 200)
    d.request_finished("a", "i1", 2.0, request="r2")
    assert (inst.in_flight, inst.prefill_tokens_pending) == (0, 0)


def test_prefill_done_releases_only_that_requests_tokens():
    """``prefill_done`` of the 100-token request leaves the 200-token one pending; its own brings the count to 0."""
    d, st = _setup()
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    d.submit("a", "r1", 1.0, prompt_tokens=100)
    d.submit("a", "r2", 1.0, prompt_tokens=200)
    d.prefill_done("r1", 1.5)
    assert st.instances["i1"].prefill_tokens_pending == 200
    d.prefill_done("r2", 1.6)
    assert st.instances["i1"].prefill_tokens_pending == 0


def test_one_models_backoff_does_not_hold_another_models_queue():
    """a's start failed, so a backs off with its request queued and no instance; b's request meanwhile waits for
    the tick (a waits with no instance), which starts b, and b's request is routed to it while a's stays queued."""
    d, st = _setup()
    d.executor.start_ready = False
    d.submit("a", "ra", 0.0)
    (iid,) = st.instances
    d.instance_failed(iid, 0.0, WarmServeError("test: the load failed"))
    d.executor.start_ready = True
    d.submit("b", "rb", 0.1)
    assert not st.instances and st.queued("b") == 1
    d.tick(0.2)
    (inst,) = st.instances.values()
    assert inst.model == "b" and d.executor.running[inst.instance_id] == ["rb"]
    assert st.queued("a") == 1 and st.queued("b") == 0


def test_an_action_applied_outside_a_tick_routes_no_queue_by_itself():
    """A request already waiting for a stays queued when a start of a is applied on its own (no tick, no loss):
    ``apply`` routes the queues only when a GPU lost meanwhile asked for it; the next tick routes it."""
    d, st = _setup()
    st.queues["a"].append("r0")
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    assert st.queued("a") == 1 and st.instances["i1"].in_flight == 0
    d.tick(1.0)
    assert st.queued("a") == 0 and d.executor.running["i1"] == ["r0"]
