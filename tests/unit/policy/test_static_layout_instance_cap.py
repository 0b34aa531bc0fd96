"""Found in review: the static baselines ignored ``max_instances_per_model`` ("most instances per model") without
a word: with a cap of 1, `dedicated` laid out 4 instances of each of two 7B models on 8 GPUs, `shared` 8 of each.
Both layouts now hold to the cap: `dedicated`'s own fill and every ``plan_shared`` layout (`shared`'s, and the
searched one-model-per-group layout `dedicated` may be given)."""

from __future__ import annotations

from collections import Counter

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.colocation import SharedLayout
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _laid_out(name: str, cap: int, layout: SharedLayout | None = None) -> Counter:
    ms = [ModelInfo(n, 13_500_000_000, 1, 524_288, 0.035, 0.015) for n in ("a", "b")]
    st = ClusterState.uniform(1, ms, gpus_per_server=8, gpu_bytes=72 * GiB)
    pol = make_policy(name, models=ms, config=PolicyConfig(max_instances_per_model=cap))
    pol.layout = layout
    d = instant_driver(pol, st)
    d.tick(0.0)
    for k in range(100):
        d.submit("a", f"r{k}", 0.5)
    d.tick(1.0)
    return Counter(i.model for i in st.instances.values())


@pytest.mark.parametrize("name", ["dedicated", "shared"])
@pytest.mark.parametrize("cap", [1, 2, 3])
def test_a_static_layout_holds_to_the_instance_cap(name, cap):
    got = _laid_out(name, cap)
    assert got == {"a": cap, "b": cap}, got  # before: dedicated 4 + 4, shared 8 + 8 at every cap


def test_a_searched_layout_given_to_dedicated_holds_to_the_cap_too():
    assert _laid_out("dedicated", 1, SharedLayout(((1, 8),), 1)) == {"a": 1, "b": 1}
    assert _laid_out("shared", 2, SharedLayout(((1, 4),), 2)) == {"a": 2, "b": 2}


def test_no_cap_lays_out_as_before():
    assert _laid_out("dedicated", 0) == {"a": 4, "b": 4}
    assert _laid_out("shared", 0) == {"a": 8, "b": 8}
