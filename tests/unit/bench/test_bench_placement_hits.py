"""`warmserve bench placement`'s survival experiment counts a hit wherever the driver starts an instance from resident
weights. It counted only starts that named a prewarm, so a cold start that the driver served from the model's own
weights (kept on the same GPUs by a stopped instance) was a miss: 45 of 59 hits for round-robin at 16 GPUs where
the driver made 51."""

from __future__ import annotations

from warmserve.bench import placement
from warmserve.policy.instant import InstantExecutor


def test_the_hit_rate_counts_every_start_the_driver_made_from_resident_weights(monkeypatch):
    starts: list[bool] = []
    real = InstantExecutor.start_instance

    def noting_start(self, inst, act, prewarm, now_s):
        starts.append(prewarm is not None)
        return real(self, inst, act, prewarm, now_s)

    monkeypatch.setattr(InstantExecutor, "start_instance", noting_start)
    r = placement.survival("round-robin", 16, 8, 12)
    assert len(starts) == r["scale_ups"]  # every start in the experiment is one of its scale-ups
    assert round(r["prewarm_hit_rate"] * r["scale_ups"]) == sum(starts), (r, sum(starts))
    assert r["kept_weight_hits"] > 0  # this workload has them: without them the check above would prove nothing
