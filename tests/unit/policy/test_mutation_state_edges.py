"""``policy.state`` edges against hand-computed values: the cold-start cost of a tensor-parallel model, a cluster
with no server yet (a live controller before its first worker joins), and the starting counts of a new
instance."""

import pytest

from warmserve.policy.state import ClusterState, InstanceState, ModelInfo

GiB = 1 << 30


def test_cold_start_cost_is_one_shards_load():
    """c_m is one shard over the host-to-device bandwidth (32 GB/s): 64 GB of weights at tp 2 load 32 GB a GPU,
    1 s; at tp 4, 0.5 s."""
    assert ModelInfo("m2", 64_000_000_000, 2).cold_start_s == pytest.approx(1.0)
    assert ModelInfo("m4", 64_000_000_000, 4).cold_start_s == pytest.approx(0.5)


def test_a_cluster_with_no_server_says_every_model_lacks_gpus():
    """No server yet: every model, tp 1 included, is unservable because the largest server has 0 GPUs."""
    models = {m.name: m for m in (ModelInfo("small", 10 * GiB, 1), ModelInfo("wide", 40 * GiB, 4))}
    st = ClusterState(servers=[], gpus=[], models=models)
    out = st.unservable()
    assert sorted(out) == ["small", "wide"]
    assert "tp 1 needs 1 GPU(s) on one server; the largest server has 0" in out["small"]
    assert "the largest server has 0" in out["wide"]


def test_a_new_instance_starts_with_nothing_counted():
    """An instance as the driver adds it: nothing in flight, no prefill backlog, no KV counts, not ready."""
    inst = InstanceState("i", "m", (0,), created_s=1.0)
    assert (inst.in_flight, inst.prefill_tokens_pending, inst.kv_blocks_used, inst.kv_blocks_mapped) == (0, 0, 0, 0)
    assert (inst.kv_blocks_wanted, inst.max_seqs, inst.kv_free_target) == (0, 0, None)
    assert not inst.ready and not inst.draining
