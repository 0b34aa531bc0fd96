import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.policy import POLICY_NAMES, PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.state import PAGE_BYTES, ClusterState, ModelInfo


def test_sizes_are_page_aligned_and_cold_start_is_shard_over_32_gbps():
    m = ModelInfo("x", weight_bytes=26_000_000_001, tp=2, kv_bytes_per_token=819_200)
    assert m.shard_bytes % PAGE_BYTES == 0 and 0 <= m.shard_bytes - 13_000_000_001 < PAGE_BYTES
    assert m.kv_block_bytes == 100 << 20  # 819200 * 256 / 2 = 100 MiB exactly
    assert m.cold_start_s == pytest.approx(13e9 / 32e9, rel=1e-6)


def test_weights_are_counted_in_the_workers_pages():
    """A worker maps the weight region in whole pool pages: with 32 MiB pages 74 MiB of weights hold 96 MiB."""
    assert ModelInfo("x", weight_bytes=74 << 20).shard_bytes == 74 << 20
    assert ModelInfo("x", weight_bytes=74 << 20, page_bytes=32 << 20).shard_bytes == 96 << 20
    with pytest.raises(InvalidArgumentError, match="page_bytes must be a positive multiple"):
        ModelInfo("x", 1, page_bytes=3 << 20)


def test_kv_pages_held_count_as_mapped_blocks():
    from warmserve import protocol as P
    from warmserve.controller.executor import kv_counts

    kv = P.KvStats(kv_blocks_total=100, kv_blocks_used=3, kv_blocks_mapped=3)
    assert kv_counts(kv) == {"total": 100, "used": 3, "mapped": 3, "wanted": 0}
    assert kv_counts(P.KvStats(kv_blocks_total=100, kv_blocks_wanted=8))["wanted"] == 8  # a stalled engine's ask
    assert kv_counts(kv, 4)["mapped"] == 4  # three 2 MiB blocks hold at least one 8 MiB page
    assert kv_counts(kv, 4, held_blocks=8)["mapped"] == 8  # the worker says two pages (blocks spread over them)
    assert kv_counts(kv, 1, held_blocks=2)["mapped"] == 3
    m = ModelInfo("x", 1, kv_bytes_per_token=8192, page_bytes=8 << 20)  # 2 MiB blocks
    assert (m.kv_block_bytes, m.kv_blocks_per_page) == (2 << 20, 4)
    assert ModelInfo("x", 1, kv_bytes_per_token=8192).kv_blocks_per_page == 1
    assert ModelInfo("x", 1, kv_bytes_per_token=24576, page_bytes=8 << 20).kv_blocks_per_page == 1  # 6 MiB


def test_bad_model_and_config_are_value_errors():
    with pytest.raises(InvalidArgumentError):
        ModelInfo("x", 1, tp=3)
    with pytest.raises(ValueError):
        ModelInfo("x", 0)
    with pytest.raises(ValueError):
        PolicyConfig(scale_in_threshold=0.9)
    with pytest.raises(ValueError):
        make_policy("nope", models=[ModelInfo("x", 1)])
    # found in review: each was accepted and then broke things silently (no forecast where history lacks the
    # slot; a model never started; a daily season 120 s off each day)
    with pytest.raises(InvalidArgumentError, match="residual_windows >= 1"):
        PolicyConfig(residual_windows=0)
    with pytest.raises(InvalidArgumentError, match="max_instances_per_model"):
        PolicyConfig(max_instances_per_model=-1)
    with pytest.raises(InvalidArgumentError, match="does not divide a day.*drift by 120 s.*e.g. 432"):
        PolicyConfig(window_s=420)
    assert PolicyConfig(window_s=450).window_s == 450 and PolicyConfig(window_s=1e6).window_s == 1e6


@pytest.mark.parametrize("key,value", [("window_s", "nan"), ("window_s", "inf"), ("load_window_s", "inf"),
                                       ("min_lifetime_s", "nan"), ("preempt_after_s", "nan"),
                                       ("ttft_target_prefills", "nan"), ("scale_out_threshold", "inf")])
def test_a_policy_option_that_is_not_a_number_is_refused_by_name(key, value):
    """Found in review: NaN passes every range check (each comparison is False), so window_s=nan failed in
    Policy.__init__ as "cannot convert float NaN to integer", naming no option, and window_s=inf later."""
    from warmserve.policy.config import parse_policy_options

    with pytest.raises(InvalidArgumentError, match=f"policy option {key} must be a finite number"):
        parse_policy_options([f"{key}={value}"])
    # inf where a field reads it as "never"
    assert parse_policy_options(["preempt_after_s=inf", "replan_s=inf"]).preempt_after_s == float("inf")


def test_actions_are_frozen_and_hashable():
    acts = {A.Prewarm("p", "m", (0, 1), 1.0), A.Evict("p", "kv"), A.StartInstance("i", "m", (0,)),
            A.StopInstance("i"), A.SetKvTarget("i", 3), A.Route("m", "i", 7), A.CancelPrewarm("p")}
    assert len(acts) == 7
    with pytest.raises(AttributeError):
        A.Route("m", "i").instance_id = "j"


def test_memory_views(models):
    st = ClusterState.uniform(1, models, gpu_bytes=72 << 30)
    assert st.free_bytes_on() == [72 << 30] * 8 and not st.busy_gpus()


def test_every_policy_name_builds(models):
    for name in POLICY_NAMES:
        assert make_policy(name, models=models).name == name


def test_a_kv_share_holds_one_request_at_the_models_context_and_no_more_than_the_room():
    """A co-served share (kv_fraction < 1) never holds less than one request at the model's context: the API accepts
    such a request. The floor was the live executor's alone, so the driver (and the simulator) counted smaller
    shares than live ran; now the driver's instance holds it. A whole-GPU start is untouched, and the floor never
    passes what the GPU has after the weights."""
    from warmserve.geometry import blocks_for_tokens
    from warmserve.policy.instant import instant_driver
    from warmserve.policy.state import kv_blocks_for

    m = ModelInfo("x", weight_bytes=1 << 30, kv_bytes_per_token=1 << 16, max_context_tokens=8192)
    st = ClusterState.uniform(1, [m], gpus_per_server=1, gpu_bytes=9 << 30)
    room_blocks = (8 << 30) // m.kv_block_bytes
    assert blocks_for_tokens(8192) == 32 and room_blocks == 512
    assert kv_blocks_for(st, "x", (0,), 0.01) == 32  # 0.01 of the room is 5 blocks: raised to the context's 32
    assert kv_blocks_for(st, "x", (0,), 0.5) == 256  # above the floor: the share as given
    assert kv_blocks_for(st, "x", (0,)) == room_blocks
    wide = ModelInfo("w", weight_bytes=1 << 30, kv_bytes_per_token=1 << 16, max_context_tokens=1 << 30)
    assert kv_blocks_for(ClusterState.uniform(1, [wide], gpus_per_server=1, gpu_bytes=9 << 30), "w", (0,), 0.01) \
        == room_blocks
    d = instant_driver(make_policy("shared", models=[m], config=PolicyConfig()), st)
    d.apply(A.StartInstance("x/0", "x", (0,), kv_fraction=0.01), 0.0)
    assert st.instances["x/0"].kv_blocks_total == 32


def test_co_residents_are_the_other_instances_on_any_of_its_gpus_and_not_prewarms(models):
    from warmserve.policy.state import InstanceState, PrewarmState

    st = ClusterState.uniform(1, models, gpus_per_server=4)
    m = models[0].name
    a, b, c, d = (InstanceState(i, m, g, created_s=0.0) for i, g in
                  (("a", (0, 1)), ("b", (1,)), ("c", (2,)), ("d", (1, 2))))
    st.instances.update({i.instance_id: i for i in (a, b, c, d)})
    st.prewarms["p"] = PrewarmState("p", m, (3,))
    assert [i.instance_id for i in st.co_residents(a)] == ["b", "d"]
    assert [i.instance_id for i in st.co_residents(c)] == ["d"]
    st.prewarms["q"] = PrewarmState("q", m, (2,))  # a prewarm beside c is no co-resident
    assert [i.instance_id for i in st.co_residents(c)] == ["d"]
    del st.instances["d"]
    assert st.co_residents(c) == [] and [i.instance_id for i in st.co_residents(b)] == ["a"]
