"""A co-served model that outgrew its host (its host's round over the TPOT target) and finds no idle GPU takes one
by time-sharing (``moves._preempt_for`` with its co-served instance as base): the victim drains and the GPU is
kept for it. Found in review: the reservation was checked against the model's scale-out demand before the split
raised it (``core.Policy._autoscale`` ran ``_release_reservations`` before ``CoServing.split``), so a light model
splitting out lost the reservation at the next tick; the victim was revived, stopped again at the tick after,
and so on every two ticks, and the splitting model never got its GPU. All through the real driver (instant
executor)."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
T0 = 1000.0


def _7b(name):
    """Llama-2 7B as the policy knows it: 13.5 GB, tp 1, 0.5 MiB of KV per token, 35 ms prefill, 15 ms step."""
    return ModelInfo(name, 13_500_000_000, 1, 524_288, 0.035, 0.015)


def test_a_splitting_model_keeps_the_gpu_it_took_and_its_victim_is_not_revived():
    models = [_7b(n) for n in "abc"]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models,
                      config=PolicyConfig(replan_s=1e9, coserve_always=True, coserve_tpot_s=0.1))
    d = instant_driver(pol, st)
    ex = d.executor
    # a and b co-served on GPU 0; c's last instance dedicated on GPU 1, all serving for 100 s
    for iid, m, g in (("a1", "a", (0,)), ("b1", "b", (0,)), ("c1", "c", (1,))):
        frac = pol._co.kv_fraction(m, 72 * GiB) if g == (0,) else 1.0
        d.apply(A.StartInstance(iid, m, g, kv_fraction=frac), T0 - 100)
        d.instance_ready(iid, T0 - 100)
        if g == (0,):
            pol._co.ids.add(iid)
    # steady loads that never finish: a 12 in flight (light, within its KV share), b 1, c 2
    for m, n in (("a", 12), ("b", 1), ("c", 2)):
        for k in range(n):
            d.submit(m, f"{m}#{k}", T0 - 10)
    stops, revives = [], []
    tick = pol.tick

    def logged(state, now_s):
        got = tick(state, now_s)
        stops.extend(a.instance_id for a in got if type(a) is A.StopInstance)
        revives.extend(a.instance_id for a in got if type(a) is A.ReviveInstance)
        return got

    pol.tick = logged
    for s in range(20):
        # a's engines measure 90 ms steps: with b, its host's round is over the 100 ms target, and a splits out
        pol.observe_decode_step("a", 0.09, 12.0, T0 + s)
        d.tick(T0 + s)
    assert stops.count("c1") == 1 and revives == []  # before the fix: stopped 10 times, revived 9
    assert st.instances["c1"].draining and pol._reserved == {"a": (1,)}
    for r in list(ex.running["c1"]):  # c's requests end: the GPU it drained goes to a's dedicated instance
        ex.running["c1"].remove(r)
        d.request_finished("c", "c1", T0 + 20)
    for s in range(21, 24):
        pol.observe_decode_step("a", 0.09, 12.0, T0 + s)
        d.tick(T0 + s)
    assert [i.gpus for i in st.instances.values() if i.model == "a" and i.instance_id not in pol._co.ids] == [(1,)]
