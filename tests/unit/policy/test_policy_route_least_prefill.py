"""``route_least_prefill``: route() sends a request to the instance with the fewest prompt tokens waiting for their
prefill (then the fewest in flight), in every policy, the static baselines too; the default since 2026-12-04. Measured
(bench/simulate/issue11/route_least_prefill_paired.json): artifact-conv's P99 TTFT 0.73-0.82x on each of six seeds."""

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.state import ClusterState, InstanceState, ModelInfo

GiB = 1 << 30
M = ModelInfo("a", 13 * GiB, 1, kv_bytes_per_token=512 << 10, prefill_s=0.035, decode_s_per_token=0.015)


def _state():
    """x1 decodes 10 requests with no prompt left to prefill; x2 holds 2 whose 8,000 prompt tokens wait."""
    st = ClusterState.uniform(1, [M], gpus_per_server=2, gpu_bytes=72 * GiB)
    st.instances["x1"] = InstanceState("x1", "a", (0,), created_s=0.0, ready_s=0.0, in_flight=10)
    st.instances["x2"] = InstanceState("x2", "a", (1,), created_s=0.0, ready_s=0.0, in_flight=2,
                                       prefill_tokens_pending=8000)
    return st


@pytest.mark.parametrize("name", ["warmserve", "autoscale", "shared", "dedicated"])
@pytest.mark.parametrize("on", [False, True])
def test_a_request_goes_where_the_fewest_prompt_tokens_wait(name, on):
    pol = make_policy(name, models=[M], config=PolicyConfig(route_least_prefill=on, coserve_tpot_s=0.0,
                                                             colocate_when_oversubscribed=False))
    act = pol.route(_state(), "a", 10.0, request_id="r")
    assert act == A.Route("a", "x1" if on else "x2", "r")


@pytest.mark.parametrize("name", ["warmserve", "autoscale", "shared", "dedicated"])
def test_every_registered_policy_routes_by_prefill_backlog_by_default(name):
    """The headline files of 2026-12-04 on are of this default; a policy's registration must not turn it off."""
    pol = make_policy(name, models=[M], config=PolicyConfig(coserve_tpot_s=0.0, colocate_when_oversubscribed=False))
    assert pol.route(_state(), "a", 10.0, request_id="r") == A.Route("a", "x1", "r")


def test_equal_prefill_backlogs_fall_back_to_the_fewest_in_flight():
    st = _state()
    st.instances["x2"].prefill_tokens_pending = 0
    pol = make_policy("warmserve", models=[M], config=PolicyConfig(route_least_prefill=True, coserve_tpot_s=0.0))
    assert pol.route(st, "a", 10.0, request_id="r") == A.Route("a", "x2", "r")
