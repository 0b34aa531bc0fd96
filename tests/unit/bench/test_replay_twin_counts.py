"""The replay's twin counts starts as its live side does. The simulator counts the starts before t = 0 apart
(found in review: they were counted with the measured span's); the live run reads its counters at t = 0 when it
replays a warm-up, and counts every start since its launch when it does not, so its twin reports the starts
before t = 0 under "warmup" with a warm-up and adds them back without one."""

import pytest

from replay_harness import replay_setup
from warmserve.bench import replay as R
from warmserve.sim import simulator as S

WORKLOAD = ["--time-scale", "0.15", "--rate", "0.8", "--duration-s", "1200", "--start-lead-s", "40"]


@pytest.fixture
def start_times(monkeypatch):
    """When the twin's simulator starts instances, relative to t = 0 (the real simulator, recording)."""
    times = []
    orig = S.Simulator.start_instance

    def start_instance(self, ist, act, p, now_s):
        times.append(now_s - self.clock0)
        return orig(self, ist, act, p, now_s)

    monkeypatch.setattr(S.Simulator, "start_instance", start_instance)
    return times


@pytest.mark.parametrize("policy", ["warmserve", "autoscale"])
def test_with_a_warmup_the_twin_reports_the_starts_before_t0_apart(start_times, policy):
    a, w, served_sim, cost = replay_setup(*WORKLOAD, "--warmup-s", "150")
    s, _ = R.run_sim(policy, w, served_sim, a, cost)
    before = sum(t < 0 for t in start_times)
    assert before > 0
    assert s["warmup"]["instance_starts"] == before
    assert s["instance_starts"] == len(start_times) - before


@pytest.mark.parametrize("policy", ["warmserve", "autoscale"])
def test_without_a_warmup_the_twin_counts_every_start_since_the_launch(start_times, policy):
    a, w, served_sim, cost = replay_setup(*WORKLOAD)
    s, _ = R.run_sim(policy, w, served_sim, a, cost)
    assert "warmup" not in s
    assert s["instance_starts"] == len(start_times) > 0
    hits = s["starts_from_prewarm"]
    assert s["prewarm_hit_rate"] == pytest.approx(hits / len(start_times))
