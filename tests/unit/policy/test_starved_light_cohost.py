"""Over-subscribed, every GPU held by a dedicated instance of a busy light model (load above the merge threshold, so
no merge moves it), and one more light model with steady load and no instance (issue 11, found in review): the
starved model used to wait for time-sharing (aged preemption: 60-120 s at the default preempt_after_s), then took a
GPU to itself, and the model stopped for it took it back the same way. Now one such GPU reopens as a co-serving
host (``CoServing.reopenable``, ``GpuMoves._reopen_host``): the busy model's requests move to a co-served instance of
it started there from its own weights, and the starved model joins beside it within a tick. Without co-serving (or
with requests never moved, migrate_max_in_flight 0), or for a model that cannot co-serve, nothing changes. All
through the real driver (instant executor), with the default configuration but for the prewarm plan's period."""

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
T0 = 1000.0


def _7b(name, weight_bytes=13_500_000_000):
    """Llama-2 7B as the policy knows it: 13.5 GB, tp 1, 0.5 MiB of KV per token, 35 ms prefill, 15 ms step."""
    return ModelInfo(name, weight_bytes, 1, 524_288, 0.035, 0.015)


def _run(n_gpus=2, busy=20, seconds=60, ready_ago=100.0, z_bytes=13_500_000_000, **cfg):
    """One server of ``n_gpus`` 72 GiB GPUs, each held since ``ready_ago`` s before T0 by a dedicated instance of
    its own 7B model, which keeps ``busy`` requests outstanding (10 s each once sent: a light model above the merge
    threshold at the default 20). Model `z` (``z_bytes`` of weights) gets a 4 s request every 2 s from T0; the
    policy ticks at each half second. Returns the policy, the state, the executor's log, every action the ticks
    returned, and the seconds after T0 at which a request of `z` was first sent to an instance (None: never)."""
    owners = [chr(ord("a") + k) for k in range(n_gpus)]
    models = [_7b(n) for n in owners] + [_7b("z", z_bytes)]
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, **cfg))
    d = instant_driver(pol, st)
    ex = d.executor
    for k, m in enumerate(owners):
        d.apply(A.StartInstance(f"{m}0", m, (k,)), T0 - ready_ago)
        d.instance_ready(f"{m}0", T0 - ready_ago)
    acts = []
    tick = pol.tick

    def logged(state, now_s):
        got = tick(state, now_s)
        acts.extend(got)
        return got

    pol.tick = logged
    dur, sent = {}, {}  # outstanding request -> its duration; sent ones -> (instance, when sent)
    first = None

    def note(now):
        for r, (iid, _) in list(sent.items()):
            if r not in ex.running.get(iid, ()):
                del sent[r]  # moved back to its queue (Migrate): sent again later
        for iid, reqs in ex.running.items():
            for r in reqs:
                sent.setdefault(r, (iid, now))

    n = 0
    for s in range(seconds):
        now = T0 + s
        for r, (iid, t) in list(sent.items()):
            if t + dur[r] <= now:
                ex.running[iid].remove(r)
                del sent[r], dur[r]
                d.request_finished(r.split("#")[0], iid, now)
        for m in owners:
            while sum(1 for r in dur if r.startswith(m + "#")) < busy:
                n += 1
                dur[f"{m}#{n}"] = 10.0
                d.submit(m, f"{m}#{n}", now)
        if s % 2 == 0:
            n += 1
            dur[f"z#{n}"] = 4.0
            d.submit("z", f"z#{n}", now)
        note(now)
        d.tick(now + 0.5)
        note(now + 0.5)
        if first is None and any(r.startswith("z#") for r in sent):
            first = s + 0.5
    return pol, st, ex.log, acts, first


@pytest.mark.parametrize("n_gpus", [2, 4])
def test_a_starved_light_model_is_served_beside_a_busy_light_model_within_a_tick(n_gpus):
    pol, st, log, acts, first = _run(n_gpus=n_gpus, seconds=120)
    assert first is not None and first <= 1.5, (
        f"z waited {first} s for its first instance (preempt_after_s {pol.cfg.preempt_after_s})")
    (moved,) = [a.instance_id for a in acts if type(a) is A.Migrate]  # one GPU reopened, once
    (host,) = [i for i in st.instances.values() if i.model == moved[:-1]]  # the owners' ids: model + "0"
    (z,) = [i for i in st.instances.values() if i.model == "z"]
    assert host.gpus == z.gpus and {host.instance_id, z.instance_id} <= pol._co.ids
    # no back and forth: every model has had the instances it has now, besides the one moved, and nothing waits
    starts = [iid for kind, iid in log if kind == "start_instance"]
    assert sorted(starts) == sorted([f"{chr(ord('a') + k)}0" for k in range(n_gpus)] + [host.instance_id,
                                                                                      z.instance_id])
    assert all(not i.draining for i in st.instances.values()) and not any(st.queues.values())


def test_a_fresh_dedicated_instance_reopens_only_after_min_lifetime():
    """The owners' instances became ready at T0: none is moved before it served min_lifetime_s (the guard merges
    keep against moving a model back and forth), and then at the first tick."""
    pol, st, log, acts, first = _run(ready_ago=0.0, seconds=30)
    lifetime = pol.cfg.min_lifetime_s
    assert first is not None and lifetime <= first <= lifetime + 1.5, (first, lifetime)


@pytest.mark.parametrize("cfg", [dict(coserve_tpot_s=0.0), dict(migrate_max_in_flight=0)],
                         ids=["coserve-off", "never-migrate"])
def test_without_coserving_or_moved_requests_the_starved_model_waits_for_time_sharing(cfg):
    """With co-serving off, or requests never moved, no instance is moved: `z` gets GPUs by time-sharing, after
    preempt_after_s."""
    pol, st, log, acts, first = _run(seconds=150, **cfg)
    assert not [a for a in acts if type(a) is A.Migrate]
    assert first is not None and first >= pol.cfg.preempt_after_s, first


def test_a_model_that_cannot_co_serve_still_waits_for_time_sharing():
    """A `z` whose weights leave no room for two on a GPU (``models_per_host`` 1): no GPU reopens for it; it gets
    one of its own by time-sharing, after preempt_after_s (the owner stopped for it may then reopen the other
    owner's GPU: it is light and co-serves)."""
    pol, st, log, acts, first = _run(seconds=150, z_bytes=40 * 10**9)
    assert pol._co.models_per_host("z", 72 * GiB) == 1
    assert first is not None and first >= pol.cfg.preempt_after_s, first
    (z,) = [i for i in st.instances.values() if i.model == "z"]
    assert z.instance_id not in pol._co.ids
    moved = [a.instance_id for a in acts if type(a) is A.Migrate]
    assert all(not st.instances.get(i) for i in moved) and len(moved) <= 1, moved
