"""``CostModel.colocation_interference``: how two instances on one GPU slow each other, against hand-computed
times. Request a (prompt 100, 1000 tokens out) decodes from t = 0; request b (prompt 1000) arrives at t = 1 on the
other instance. "time-share": b's prefill runs at half speed beside a's decode and a loses that much; "phase": a
prefill overlaps a decode, so only the two decodes share the GPU; "none": neither slows."""

import heapq
from dataclasses import replace

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.policy.state import InstanceState
from warmserve.sim.costmodel import CostModel
from warmserve.sim.engine_model import BatchEngines

MIB = 1 << 20
PROMPT_A, OUT_A, PROMPT_B, T_B = 100, 1000, 1000, 1.0


def run(rule: str, out_b: int):
    # KV mapping free, so that a prefill's time is the cost model's prefill alone
    cost = replace(CostModel(), kv_map_s_per_gib=0.0, colocation_interference=rule)
    c7 = cost.models["llama2-7b"]
    heap, first, done = [], {}, {}

    def push(t, inst):
        heapq.heappush(heap, (t, len(first) + len(done) + len(heap) * 1e-9, id(inst), inst, inst.version))

    eng = BatchEngines(cost, 256, [PROMPT_A, PROMPT_B], [OUT_A, out_b], [5, 5], [72 * 10**9], [0], push,
                       lambda rid, t: first.setdefault(rid, t), lambda inst, rid, t: done.setdefault(rid, t))
    insts = []
    for name in ("a", "b"):
        inst = eng.add(InstanceState(name, "m", (0,), created_s=0.0, kv_blocks_total=1000), 0, c7, 0, MIB, 0.0)
        eng.ready(inst, 0.0)
        insts.append(inst)
    eng.admit(insts[0], 0, 0.0)
    pending = [(T_B, insts[1], 1)]
    while heap or pending:
        if pending and (not heap or pending[0][0] <= heap[0][0]):
            t, inst, rid = pending.pop()
            eng.admit(inst, rid, t)
            continue
        t, _, _, inst, ver = heapq.heappop(heap)
        if ver == inst.version and inst.st.instance_id in eng.insts:
            eng.event(inst, t)
    alone_a = first[0] + sum(cost.decode_step_s(c7, 1, PROMPT_A + 1 + k) for k in range(OUT_A - 1))
    return first, done, alone_a, cost.prefill_batch_s(c7, [PROMPT_B])


@pytest.mark.parametrize("rule,slow_prefill", [("time-share", 2), ("phase", 1), ("none", 1)])
def test_a_prefill_beside_a_decode_slows_as_the_rule_says(rule, slow_prefill):
    first, done, alone_a, prefill_b = run(rule, out_b=1)
    assert first[1] == pytest.approx(T_B + slow_prefill * prefill_b, rel=1e-9)
    # a decoded at half speed for as long as b's prefill ran at half speed: it lost prefill_b of its own time
    lost = prefill_b if rule == "time-share" else 0.0
    assert done[0] == pytest.approx(alone_a + lost, rel=1e-9)


def test_two_decodes_share_the_gpu_under_phase_as_under_time_share():
    """b decodes 200 tokens beside a: under both rules a loses b's decode time (both at half speed); under
    time-share it loses b's prefill time too, so the two ends differ by exactly that prefill."""
    ts_first, ts_done, alone_a, prefill_b = run("time-share", out_b=200)
    ph_first, ph_done, _, _ = run("phase", out_b=200)
    _, none_done, _, _ = run("none", out_b=200)
    assert none_done[0] == pytest.approx(alone_a, rel=1e-9)
    assert ph_done[0] > alone_a + 1.0  # b's 199 steps at half speed cost a about that much
    assert ts_done[0] - ph_done[0] == pytest.approx(prefill_b, rel=1e-6)


def test_an_unknown_rule_is_refused_naming_the_rules():
    with pytest.raises(InvalidArgumentError, match="colocation_interference is 'overlap': it must be one of "
                                                   "time-share, phase, none"):
        CostModel(colocation_interference="overlap")
    with pytest.raises(InvalidArgumentError, match="time-share, phase, none"):
        CostModel.from_profile({"schema": "warmserve.sim.profile/1", "colocation_interference": 3})
    cm = CostModel.from_profile({"schema": "warmserve.sim.profile/1", "colocation_interference": "phase"})
    assert cm.colocation_interference == "phase" and CostModel.from_profile(cm.to_profile()) == cm
