"""warmserve_running_requests and warmserve_waiting_requests (vLLM's num_requests_running / _waiting): a request sent
to an instance may wait in its engine's queue (behind max_num_seqs). Found in review: every request sent was
reported as running, and the waiting count saw only the controller's queue. The gauges as views.collect sets them
from the controller's counts and the instances' running counts its workers report (WorkerInstance.running)."""

from types import SimpleNamespace as NS

import msgspec

from warmserve import protocol as P
from warmserve.controller import views
from warmserve.controller.metrics import ControllerMetrics


def _ctl(queued: dict, instances: dict, reports: dict):
    """A controller as views.collect reads it: ``instances`` id -> (model, requests in flight), ``reports`` id ->
    the WorkerInstance its worker's latest Stats hold (absent: none listed)."""
    recs = {}
    for iid, (model, _) in instances.items():
        listed = [reports[iid]] if iid in reports else []
        stats = P.Stats(id=0, worker_id=f"w-{iid}", device="cpu", pid=1, uptime_s=1.0, pool=P.PoolStats(), models=[],
                        instances=listed, in_flight=0)
        recs[iid] = NS(model=model, ready=True, worker=NS(stats=stats))
    state = NS(queued=lambda m: queued.get(m, 0),
               instances={iid: NS(model=m, in_flight=n) for iid, (m, n) in instances.items()})
    return NS(metrics=ControllerMetrics(), models={"a": None, "b": None}, state=state, instances=recs, prewarms={},
              hub=NS(workers={}), lost_workers={}, restarting={}, restarting_by_plan=set())


def _gauges(ctl, model: str) -> tuple[float, float, float, float]:
    views.collect(ctl)
    m = ctl.metrics
    return (m.running.get(model=model), m.waiting.get(model=model), m.inflight.get(model=model),
            m.queue.get(model=model))


def test_requests_waiting_in_an_engine_are_waiting_not_running():
    # a: 6 sent to one instance whose engine runs 2 (max_num_seqs 2), 1 queued in the controller
    ctl = _ctl({"a": 1}, {"i1": ("a", 6)}, {"i1": P.WorkerInstance(name="a", in_flight=6, running=2)})
    assert _gauges(ctl, "a") == (2, 5, 6, 1)


def test_running_is_summed_over_instances_and_capped_by_what_is_in_flight():
    # i2's report predates requests that ended since: 1 in flight though 3 were running
    ctl = _ctl({}, {"i1": ("a", 4), "i2": ("a", 1), "i3": ("b", 2)},
               {"i1": P.WorkerInstance(name="a", in_flight=4, running=2),
                "i2": P.WorkerInstance(name="a", in_flight=3, running=3),
                "i3": P.WorkerInstance(name="b", in_flight=2, running=2)})
    assert _gauges(ctl, "a") == (3, 2, 5, 0)
    assert _gauges(ctl, "b") == (2, 0, 2, 0)


def test_a_worker_that_does_not_report_it_has_its_requests_counted_running():
    old = msgspec.msgpack.decode(msgspec.msgpack.encode({"name": "a", "in_flight": 3}), type=P.WorkerInstance)
    assert old.running == -1  # an older worker's Stats still decode
    ctl = _ctl({"a": 2}, {"i1": ("a", 3), "i2": ("a", 1)}, {"i1": old})  # i2: not listed in its Stats yet
    assert _gauges(ctl, "a") == (4, 2, 4, 2)

