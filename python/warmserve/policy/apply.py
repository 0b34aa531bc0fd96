"""The reference bookkeeping of the contract: how a driver changes ClusterState when it applies an action.

Drivers with real or simulated durations do the same updates spread over time (a prewarm's progress rises, an
instance becomes ready later). Tests, benchmarks and simple drivers use ``apply`` with everything instant.
"""

from __future__ import annotations

from warmserve.errors import InvalidArgumentError
from warmserve.policy import actions as A
from warmserve.policy.state import ClusterState, InstanceState, PrewarmState


def kv_blocks_for(state: ClusterState, model: str, gpus, kv_fraction: float = 1.0) -> int:
    """KV blocks an instance of ``model`` on ``gpus`` may hold: ``kv_fraction`` of the GPUs' memory after its
    own weights shard."""
    m = state.models[model]
    room = min(state.gpus[g].total_bytes for g in gpus) - m.shard_bytes
    return max(0, int(room * kv_fraction) // m.kv_block_bytes)


def apply(state: ClusterState, act, now_s: float, *, instant: bool = True) -> None:
    """Apply one action to ``state``. ``instant``: prewarms load and instances start at once."""
    if isinstance(act, A.Prewarm):
        if act.prewarm_id in state.prewarms:
            raise InvalidArgumentError(f"prewarm id {act.prewarm_id!r} exists already")
        state.prewarms[act.prewarm_id] = PrewarmState(act.prewarm_id, act.model, tuple(act.gpus),
                                                      1.0 if instant else 0.0, act.score)
    elif isinstance(act, (A.Evict, A.CancelPrewarm)):
        state.prewarms.pop(act.prewarm_id)
    elif isinstance(act, A.StartInstance):
        for pid in act.evict:
            state.prewarms.pop(pid)
        if act.prewarm_id is not None:
            state.prewarms.pop(act.prewarm_id)
        total = kv_blocks_for(state, act.model, act.gpus, act.kv_fraction)
        state.instances[act.instance_id] = InstanceState(
            act.instance_id, act.model, tuple(act.gpus), created_s=now_s, ready_s=now_s if instant else None,
            kv_blocks_total=total, kv_blocks_mapped=total if instant else 0,
        )
    elif isinstance(act, A.StopInstance):
        inst = state.instances[act.instance_id]
        inst.draining = True
        if inst.in_flight == 0:
            del state.instances[act.instance_id]
    elif isinstance(act, A.SetKvTarget):
        inst = state.instances[act.instance_id]
        inst.kv_free_target = act.free_blocks
        inst.kv_blocks_mapped = min(inst.kv_blocks_total, inst.kv_blocks_used + act.free_blocks)
    elif isinstance(act, A.Route):
        state.instances[act.instance_id].in_flight += 1
        if state.queued.get(act.model, 0) > 0:
            state.queued[act.model] -= 1
    else:
        raise InvalidArgumentError(f"not a policy action: {act!r}")
