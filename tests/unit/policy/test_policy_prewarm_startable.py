"""Prewarms go only on GPUs an instance of their model could start on (its shard and one KV block, as
``Board.choose_for_instance`` asks): found in review, a replica went on a 40 GiB GPU beside an idle 80 GiB one and
counted as the model's prewarm for good (no hit, ever), and a model no GPU can serve took all prewarm memory from
one that could be served."""

import numpy as np

from warmserve.policy import make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, GpuState, ModelInfo, ServerState

GiB = 1 << 30
WINDOWS = 576  # two days of 5-minute windows of history
NOW_S = WINDOWS * 300.0


def _history(in_flight: float):
    return np.arange(WINDOWS) * 300.0, np.full(WINDOWS, in_flight), np.full(WINDOWS, in_flight)


def test_a_prewarm_goes_where_its_model_can_start_and_the_start_uses_it():
    m = ModelInfo("m", 40 * GiB, tp=1, kv_bytes_per_token=512 << 10)  # a 40 GiB shard, 128 MiB KV blocks
    st = ClusterState([ServerState(0, (0, 1))], [GpuState(0, 0, 40 * GiB), GpuState(1, 0, 80 * GiB)], {"m": m})
    d = instant_driver(make_policy("warmserve", models=[m], history={"m": _history(10.0)}), st)
    d.tick(NOW_S)
    assert [p.gpus for p in st.prewarms.values()] == [(1,)]  # was (0,): the shard fits there, no KV block does
    d.submit("m", "r1", NOW_S + 1.0)
    assert [i.gpus for i in st.instances.values()] == [(1,)]
    assert any(e[0] == "start_instance" for e in d.executor.log) and not st.prewarms  # activated from it


def test_a_model_no_gpu_can_serve_gets_no_prewarm_and_leaves_room_to_one_that_can():
    big = ModelInfo("big", 40 * GiB, tp=1, kv_bytes_per_token=512 << 10)  # no 40 GiB GPU holds a KV block too
    small = ModelInfo("small", 13 * GiB, tp=1, kv_bytes_per_token=512 << 10)
    st = ClusterState.uniform(1, [big, small], gpus_per_server=2, gpu_bytes=40 * GiB)
    assert list(st.unservable()) == ["big"]
    pol = make_policy("warmserve", models=[big, small], history={"big": _history(40.0), "small": _history(40.0)})
    d = instant_driver(pol, st)
    d.tick(NOW_S)
    assert {p.model for p in st.prewarms.values()} == {"small"}


def test_the_round_robin_ablation_places_prewarms_where_they_can_start_too():
    m = ModelInfo("m", 40 * GiB, tp=1, kv_bytes_per_token=512 << 10)
    st = ClusterState([ServerState(0, (0, 1))], [GpuState(0, 0, 40 * GiB), GpuState(1, 0, 80 * GiB)], {"m": m})
    d = instant_driver(make_policy("round-robin-placement", models=[m], history={"m": _history(10.0)}), st)
    d.tick(NOW_S)
    assert [p.gpus for p in st.prewarms.values()] == [(1,)]
