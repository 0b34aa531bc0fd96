"""The load signals of ``core.Policy`` (``signals.LoadSignals``) called directly on a real policy: the prefill
budget when the TTFT target is off, the scale-in hold's window edge, and which instances get KV targets."""

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, InstanceState, ModelInfo

GiB = 1 << 30


def _models():
    return [ModelInfo("a", 13 * GiB, 1, 512 << 10, prefill_s=0.035, decode_s_per_token=0.015)]


def _policy(**cfg):
    return make_policy("warmserve", models=_models(), config=PolicyConfig(**cfg))


@pytest.mark.parametrize("stretch", [True, False])
def test_a_ttft_target_of_zero_turns_the_prefill_budget_off(stretch):
    pol = _policy(ttft_target_prefills=0.0, prefill_budget_decode_stretch=stretch)
    assert pol.prefill_budget_s("a") == 0.0
    on = _policy(ttft_target_prefills=10.0, prefill_budget_decode_stretch=stretch)
    assert on.prefill_budget_s("a") > 0.0


def test_a_need_holds_for_exactly_scale_in_hold_s_then_goes():
    """A peak of 3 instances at t = 0 still counts at t = 30 with a 30 s hold (ticks fall on the edge), not after."""
    pol = _policy(scale_in_hold_s=30.0)
    assert pol._held_need("a", 0.0, 3.0) == 3.0
    assert pol._held_need("a", 10.0, 1.0) == 3.0
    assert pol._held_need("a", 30.0, 1.0) == 3.0
    assert pol._held_need("a", 30.5, 1.0) == 1.0


def test_an_instance_whose_kv_size_is_not_known_gets_no_kv_target():
    """kv_blocks_total 0: its engine reported no cache size (yet); a target of 0 blocks would be an order to it."""
    st = ClusterState.uniform(1, _models(), gpus_per_server=2, gpu_bytes=72 * GiB)
    st.instances["a0"] = InstanceState("a0", "a", (0,), 0.0, 0.0, in_flight=2)
    st.instances["a1"] = InstanceState("a1", "a", (1,), 0.0, 0.0, in_flight=2, kv_blocks_total=100,
                                       kv_blocks_mapped=100)
    out = []
    _policy()._kv_targets(st, Board(st), out)
    assert [a.instance_id for a in out if isinstance(a, A.SetKvTarget)] == ["a1"]


@pytest.mark.parametrize("per_page", [2, 4])
def test_a_kv_target_asks_for_whole_pages_where_blocks_share_pages(per_page):
    """2 MiB blocks in pages of 2 or 4 of them: the engine maps whole pages, so used + free fills whole pages."""
    m = ModelInfo("a", 13 * GiB, 1, kv_bytes_per_token=8192, page_bytes=per_page * (2 << 20))
    assert m.kv_blocks_per_page == per_page
    st = ClusterState.uniform(1, [m], gpus_per_server=1, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=[m], config=PolicyConfig())
    for used, in_flight in ((5, 0), (6, 3), (9, 17)):
        st.instances["a0"] = InstanceState("a0", "a", (0,), 0.0, 0.0, in_flight=in_flight, kv_blocks_total=1001,
                                           kv_blocks_used=used, kv_blocks_mapped=used)
        out = []
        pol._kv_targets(st, Board(st), out)
        (target,) = [a for a in out if isinstance(a, A.SetKvTarget)]
        assert (used + target.free_blocks) % per_page == 0
        assert target.free_blocks >= pol.kv_free_target(st.instances["a0"])
