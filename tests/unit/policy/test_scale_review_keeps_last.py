"""``PolicyConfig.forecast_keep_yields_to_starved``: a quiet co-served model's last instance, kept for its window
forecast (``CoServing.keeps_last``), yields to a model that starves (requests waiting, no instance, no GPUs found this
tick) on a cluster too small for one instance of every model, as ``last_instance_hold_s`` yields (``core.Policy``,
step 3). Found live (64 copies of llama-20m on 2 CPU workers, 4 co-served per worker): after a forecast window closed,
the 8 models served in it kept their slots with nothing in flight while 8 models with requests waited for
time-sharing's preempt_after_s, 30-40 s to their first token against 5.5 s before the window closed. Off by default
(a trade on ServeGen, PolicyConfig), where the forecast keeps its instances as before."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _waits(n_models: int, second_wave: bool, yields: bool = True) -> tuple[dict[str, float], ClusterState]:
    """2 GPUs of 16 GiB, models of 2 GiB (4 co-served per GPU). m00-m07 get one request each at 1 s; m08-m15 one
    each at 22 s, after the 20 s window closed (so m00-m07 have a forecast above 0). Each request ends at the tick
    its instance takes it. Returns each model's wait to that tick, and the state at 60 s."""
    models = [ModelInfo(f"m{i:02d}", 2 * GiB, 1, 65536) for i in range(n_models)]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=16 * GiB)
    cfg = PolicyConfig(prewarm=False, window_s=20.0, forecast_keep_yields_to_starved=yields)
    d = instant_driver(make_policy("warmserve", models=models, config=cfg), st)
    pending: dict[str, float] = {}
    waits: dict[str, float] = {}

    def submit(names, at):
        for m in names:
            d.submit(m, f"{m}-{at}", at)
            pending[m] = at

    submit([f"m{i:02d}" for i in range(8)], 1.0)
    for k in range(2, 121):
        t = k / 2
        if t == 22.0 and second_wave:
            submit([f"m{i:02d}" for i in range(8, 16)], t)
        d.tick(t)
        for inst in list(st.instances.values()):
            if inst.ready and inst.in_flight and inst.model in pending:
                waits[inst.model] = t - pending.pop(inst.model)
                d.request_finished(inst.model, inst.instance_id, t)
    assert not pending, pending
    return waits, st


def test_a_forecast_does_not_keep_idle_cohosted_slots_from_starving_models():
    waits, _ = _waits(16, True)
    late = {m: w for m, w in waits.items() if m >= "m08"}
    assert len(late) == 8 and max(late.values()) <= 1.0, late  # before: 5.5-14.5 s, the forecast's hold
    waits, _ = _waits(16, True, yields=False)  # the registered rule: the forecast holds them
    assert max(w for m, w in waits.items() if m >= "m08") > 5.0, waits


def test_with_nobody_starving_the_forecast_still_keeps_the_cohosted_instances():
    _, st = _waits(16, False)
    assert {i.model for i in st.instances.values()} >= {f"m{i:02d}" for i in range(2, 8)}  # the co-served ones
