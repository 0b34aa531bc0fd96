"""The controller's feed of measured decode steps to the policy (``controller.observed.ObservedSteps``): per model
the slowest fresh measure among its workers' Stats goes to ``Policy.observe_decode_step``; a measure is fresh only
while its engine's decode step count moves (an idle engine's old mean is not handed on again, so the policy's copy
ages out); lost workers and workers with no Stats yet are skipped."""

from types import SimpleNamespace

from warmserve import protocol as P
from warmserve.controller.observed import ObservedSteps
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.state import ModelInfo


def _worker(wid, *insts, alive=True):
    # the part of a worker's Stats the feed reads: its instances
    stats = SimpleNamespace(instances=[P.WorkerInstance(name=n, in_flight=1, decode_step_s=s, decode_batch=b,
                                                        decode_steps=c) for n, s, b, c in insts])
    return SimpleNamespace(worker_id=wid, alive=alive, stats=stats)


def _ctl(workers, now_s=5.0):
    seen = []
    policy = SimpleNamespace(observe_decode_step=lambda *a: seen.append(a))
    return SimpleNamespace(gpu_workers=workers, now_s=lambda: now_s, policy=policy), seen


def test_each_model_gets_its_slowest_fresh_measure():
    ctl, seen = _ctl([_worker("w0", ("a", 0.03, 2.0, 10), ("b", 0.01, 1.0, 4)),
                      _worker("w1", ("a", 0.05, 3.0, 7), ("c", 0.0, 0.0, 0)),  # c: no decode step yet
                      _worker("w2", ("a", 0.09, 1.0, 9), alive=False),
                      SimpleNamespace(worker_id="w3", alive=True, stats=None)])
    ObservedSteps().feed(ctl)
    assert sorted(seen) == [("a", 0.05, 3.0, 5.0), ("b", 0.01, 1.0, 5.0)]


def test_a_measure_is_handed_on_again_only_once_its_count_moves():
    feed = ObservedSteps()
    ctl, seen = _ctl([_worker("w0", ("a", 0.03, 2.0, 10))])
    feed.feed(ctl)
    feed.feed(ctl)  # the engine ran no decode step since: nothing new
    assert seen == [("a", 0.03, 2.0, 5.0)]
    ctl.gpu_workers = [_worker("w0", ("a", 0.04, 2.0, 12))]
    feed.feed(ctl)
    ctl.gpu_workers = [_worker("w0", ("a", 0.02, 1.0, 3))]  # a new activation counts from 0 again
    feed.feed(ctl)
    assert [s[1] for s in seen] == [0.03, 0.04, 0.02]


def test_the_policy_reads_what_the_feed_hands_it():
    pol = make_policy("warmserve", models=[ModelInfo("a", 10 << 30, 1, 1 << 19)], config=PolicyConfig())
    ctl = SimpleNamespace(gpu_workers=[_worker("w0", ("a", 0.08, 2.0, 10))], now_s=lambda: 7.0, policy=pol)
    ObservedSteps().feed(ctl)
    assert pol._co.step_s("a", 2.0) >= 0.08
