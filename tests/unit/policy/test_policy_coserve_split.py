"""Co-serving's bookkeeping across ticks (``policy.coserve``; found in review, each test failed before its fix):
a split starts one dedicated instance, its mark and a conversion's go stale when the model turns light again, a
move retired this tick is not made again, and a join made between ticks is charged once. Also route()'s prefill
budget with the arriving request's own prompt. All through the real driver (instant executor)."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _cluster(names, n_gpus, placed, *, decode=0.06, kv=1 << 19, start_ready=True, **cfg):
    """``placed``: (instance id, model, gpus, co-served) already running and ready at t = 0."""
    models = [ModelInfo(n, 10 * GiB, 1, kv, decode_s_per_token=decode) for n in names]
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=80 * GiB)
    pol = make_policy("warmserve", models=models,
                      config=PolicyConfig(replan_s=1e9, window_s=1e6, coserve_always=True, **cfg))
    d = instant_driver(pol, st, start_ready=start_ready)
    for iid, m, g, co in placed:
        d.apply(A.StartInstance(iid, m, g, kv_fraction=0.4 if co else 1.0), 0.0)
        d.instance_ready(iid, 0.0)
        if co:
            pol._co.ids.add(iid)
    pol._plan_window = 0
    return d, st, pol


def _live(st, m):
    return [i for i in st.instances.values() if i.model == m and not i.draining]


def test_a_split_starts_one_dedicated_instance_not_one_per_tick():
    for ready in (True, False):
        d, st, pol = _cluster("ab", 8, [("a1", "a", (0,), True), ("b1", "b", (0,), True)], start_ready=ready)
        for k in range(5):  # 5 in flight: light (0.2 instances), but the host's round is 2 x 60 ms > 0.1 s
            d.submit("a", f"a{k}", 10.0)
        d.submit("b", "b0", 10.0)
        for t in range(11, 16):
            d.tick(float(t))
        dedicated = [i.instance_id for i in _live(st, "a") if i.instance_id not in pol._co.ids]
        assert len(dedicated) == 1, (ready, dedicated)  # was one more every tick, on every free GPU


def _marked_then_idle(**cfg):
    """a and b share GPU 0 (48 ms steps), c runs alone on GPU 1: a's burst of 20 marks it to split with no GPU
    for a dedicated instance; then the burst ends and the host's round is back within the target."""
    d, st, pol = _cluster("abc", 2, [("a1", "a", (0,), True), ("b1", "b", (0,), True), ("c1", "c", (1,), False)],
                          decode=0.048, **cfg)
    for k in range(20):  # round 2 x 48 ms + 20 x 0.24 ms > 0.1 s
        d.submit("a", f"a{k}", 10.0)
    d.submit("b", "b0", 10.0)
    d.submit("c", "c0", 10.0)
    d.tick(11.0)
    assert pol._co.splitting == {"a"}
    for k in range(20):
        d.request_finished("a", "a1", 11.5, request=f"a{k}")
    return d, st, pol


def test_a_split_mark_is_dropped_once_the_model_is_light_and_its_host_within_target():
    d, st, pol = _marked_then_idle(idle_to_zero=True)
    for t in range(12, 30):
        d.tick(float(t))
    assert "a" not in pol._co.splitting
    assert "a1" not in st.instances or st.instances["a1"].draining  # scale-in skipped a marked model for good


def test_a_stale_split_mark_takes_no_gpu_from_another_model():
    d, st, pol = _marked_then_idle()
    d.request_finished("c", "c1", 11.5, request="c0")
    for t in range(12, 30):
        d.tick(float(t))
    assert "c1" in st.instances and not st.instances["c1"].draining  # was stopped for a's idle "split"
    assert [i.instance_id for i in _live(st, "a")] == ["a1"]


def test_a_conversion_is_dropped_when_its_model_turns_light_before_it_is_alone():
    d, st, pol = _cluster("abcd", 2, [("a1", "a", (0,), True), ("b1", "b", (0,), True), ("c1", "c", (1,), True)],
                          decode=0.015, kv=1 << 17, start_ready=False, coserve_max_models=2)
    co = pol._co
    d.submit("b", "b0", 1.0)
    d.submit("c", "c0", 1.0)
    for k in range(30):  # a: 30 in flight, no longer light, no free GPU: b is moved off its host (vacate)
        d.submit("a", f"a{k}", 10.0)
    d.tick(11.0)
    assert co.converting == {(0,): "a"}
    for k in range(29):  # a keeps one request: light again
        d.request_finished("a", "a1", 11.5, request=f"a{k}")
    for t in range(12, 20):
        d.tick(float(t))
    (moved,) = [i for i in st.instances.values() if i.model == "b" and not i.ready]
    d.instance_ready(moved.instance_id, 20.0)
    d.request_finished("b", "b1", 21.0)
    d.submit("b", "bx", 29.5)
    for t in range(22, 34):
        d.tick(float(t))
    assert co.converting == {}
    d.submit("d", "d0", 34.0)  # d (no instance, over-subscribed) joins a's host, which has room
    assert [i.gpus for i in _live(st, "d")] == [(0,)]  # was refused: the host stayed "converting" for good


def test_a_move_finished_this_tick_is_not_made_again():
    d, st, pol = _cluster("abce", 3, [("a1", "a", (0,), True), ("b1", "b", (0,), True), ("c1", "c", (1,), True),
                                      ("e1", "e", (2,), True)], decode=0.015, kv=1 << 17, start_ready=False,
                          coserve_max_models=2)
    for m in "bce":
        d.submit(m, f"{m}0", 1.0)
    for k in range(30):
        d.submit("a", f"a{k}", 10.0)
    d.tick(11.0)  # vacate: b moves to c's host
    (moved,) = [i for i in st.instances.values() if i.model == "b" and not i.ready]
    d.instance_ready(moved.instance_id, 12.0)  # its tick retires b1: the move is done
    assert [i.instance_id for i in _live(st, "b")] == [moved.instance_id]  # was a third copy, started again


def test_a_join_made_between_ticks_is_charged_once():
    models = [ModelInfo(n, 10 * GiB, 1, 1 << 19) for n in "abcde"]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=80 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6))
    d = instant_driver(pol, st)
    co = pol._co
    d.apply(A.StartInstance("a1", "a", (0,), kv_fraction=co.kv_fraction("a", 80 * GiB)), 0.0)
    co.ids.add("a1")
    d.apply(A.StartInstance("e1", "e", (1,)), 0.0)
    pol._plan_window = 0
    d.submit("a", "a0", 0.0)
    d.submit("e", "e0", 0.0)
    for t in range(1, 7):
        d.tick(float(t))
    for m in "bcd":  # four shards and KV shares fit GPU 0 exactly: each joins through route(), no tick between
        d.submit(m, f"{m}0", 7.0)
    assert [i.gpus for m in "bcd" for i in _live(st, m)] == [(0,)] * 3  # d waited a tick: b and c counted twice


def test_route_admits_a_request_whose_prefill_ends_within_the_ttft_target():
    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19, prefill_s=0.035, decode_s_per_token=0.015)]
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6))
    d = instant_driver(pol, st)
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    budget_prefills = round(pol.prefill_budget_s("a") / 0.035)
    for k in range(budget_prefills + 1):  # the budget's prefills ahead, then one more: its own
        d.submit("a", f"r{k}", 1.0, prompt_tokens=1024)
    assert list(st.instances) == ["i1"]  # was a second instance for the last one
    assert st.instances["i1"].in_flight == budget_prefills + 1


def test_a_co_served_instance_takes_no_more_requests_than_its_kv_share_holds():
    # one GPU, two co-served models: a burst of a finds no GPU for a dedicated instance. Its requests past what
    # the co-served instance's KV share holds wait in the driver's queue (was: all 60 routed there as overflow,
    # where they stayed queued inside that engine even after an instance of a's own came up)
    d, st, pol = _cluster("ab", 1, [("a1", "a", (0,), True), ("b1", "b", (0,), True)], kv=1 << 19)
    # its KV share (of what its shard leaves) over sequences of coserve_context_tokens, 0.5 MiB a token
    cap = int(pol._co.kv_fraction("a", 80 * GiB) * 70 * GiB // (1024 * (1 << 19)))
    assert 1 <= cap < 32
    for k in range(60):
        d.submit("a", f"a{k}", 1.0)
    assert st.instances["a1"].in_flight == cap
    assert len(st.queues["a"]) == 60 - cap
    # a GPU joins: a's dedicated instance takes the queued requests
    d.add_gpus("another server", [80 * GiB])
    for t in range(2, 6):
        d.tick(float(t))
    (ded,) = [i for i in _live(st, "a") if i.instance_id != "a1"]
    assert ded.in_flight == 60 - cap and not st.queues["a"]
    assert pol._co.seq_capacity("a", 80 * GiB) == cap
