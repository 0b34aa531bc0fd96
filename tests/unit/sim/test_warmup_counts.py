"""Starts, evictions and migrated requests are counted over the measured span, as GPU-seconds are; the unmeasured
warm-up's are reported apart (found in review: `shared`'s whole layout, started in the warm-up, counted as starts
of the replay, and warmserve's hit rate mixed the warm-up's starts with the measured ones)."""

import dataclasses

import pytest

from warmserve.sim.presets import paper_preset
from warmserve.sim.simulator import Simulator


class _Recording(Simulator):
    """The simulator, recording when the driver starts instances, evicts prewarms and migrates requests."""

    def _reset(self):
        super()._reset()
        self.log = {"measured": dict.fromkeys(("total", "cold", "evictions", "migrated"), 0)}
        self.log["warmup"] = dict(self.log["measured"])

    def _period(self, now_s):
        return self.log["measured" if now_s >= self.clock0 else "warmup"]

    def start_instance(self, ist, act, p, now_s):
        self._period(now_s)["total"] += 1
        self._period(now_s)["cold"] += p is None
        return super().start_instance(ist, act, p, now_s)

    def drop_prewarm(self, p, evicted, now_s):
        self._period(now_s)["evictions"] += bool(evicted)
        return super().drop_prewarm(p, evicted, now_s)

    def migrate_requests(self, ist, now_s):
        moved = super().migrate_requests(ist, now_s)
        self._period(now_s)["migrated"] += len(moved)
        return moved


def _check(s: dict, log: dict) -> None:
    assert s["instance_starts"] == log["total"]
    assert s["starts_cold"] == log["cold"]
    assert s["starts_from_prewarm"] + s["starts_from_loading_prewarm"] + s["starts_cold"] == log["total"]
    assert s["evictions"] == log["evictions"]
    assert s["requests_migrated"] == log["migrated"]


@pytest.fixture(scope="module")
def code():
    p = paper_preset("code")
    return p, p.build(1.0, 0)


def test_shared_layout_started_in_the_warmup_is_not_a_start_of_the_measured_span(code):
    p, w = code
    sim = _Recording(w, p.models, "shared", config=dataclasses.replace(p.config, shared_search=False))
    s = sim.run().summary
    n = len(sim.state.instances)
    assert n > 0 and sim.log["warmup"]["total"] == n and sim.log["measured"]["total"] == 0
    assert s["instance_starts"] == 0 and s["prewarm_hit_rate"] == 0.0
    assert s["warmup"]["instance_starts"] == n and s["warmup"]["starts_cold"] == n
    assert s["warmup"]["requests"] == sim.n_warm > 0


def test_warmserve_counts_split_at_the_start_of_the_measured_span(code):
    p, w = code
    sim = _Recording(w, p.models, "warmserve", config=p.config)
    s = sim.run().summary
    pre, post = sim.log["warmup"], sim.log["measured"]
    assert pre["total"] > 0 and post["total"] > 0 and pre["evictions"] > 0
    _check(s, post)
    _check(s["warmup"], pre)
    assert s["prewarm_hit_rate"] == s["starts_from_prewarm"] / s["instance_starts"]
